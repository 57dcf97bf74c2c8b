//! Stride-1 convolutions on AMX-BF16 tiles (`--precision bf16` on CPUs with AMX: Sapphire Rapids and
//! later), where `vdpbf16ps` gains nothing over f32 FMAs (README, Performance): one `tdpbf16ps` multiplies
//! a 16 x 32 bf16 tile by a 32 x 16 one into 16 x 16 f32 sums, 16 times the work of an AVX-512 FMA.
//!
//! The convolution is an implicit GEMM with no column matrix: A is a tile of packed weights (16 output
//! channels x up to 16 input-channel pairs, one tap) and B a tile read straight from the input that
//! `direct::padded` lays out for the `vdpbf16ps` kernel (channel pairs as planes, so the rows of B are the
//! same 16 voxels of consecutive pair planes: one load with the plane as stride; a tap is a pointer
//! offset). C tiles hold 16 output channels x 16 voxels of one output row, stored as rows of the NCDHW
//! output. Each output value is summed by one task in a fixed order, so results do not depend on the
//! thread count or the batch. Inputs and weights are rounded to bf16 once (to nearest even), as in the
//! `vdpbf16ps` kernel; `volume::im2col_conv3d` on the rounded operands is the reference.

use super::direct::{self, Bf16Pair, Input};
use super::elementwise::Epilogue;
use crate::backend::volume::Conv3d;
use rayon::prelude::*;
use std::arch::asm;

/// Rows of every tile: output channels of A and C, channel pairs of B, and voxels per row of B and C.
const TILE: usize = 16;

/// Whether this process can run AMX-BF16: the CPU has it (CPUID.7.0:EDX bits 22 and 24), Linux granted
/// the process the tile state (it must be asked for, `ARCH_REQ_XCOMP_PERM`), AVX512-BF16 is allowed,
/// and `XAICLIP_CPU_CAPABILITY=avx512` (or a lower cap) does not turn it off.
pub(super) fn available() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        let capped = std::env::var("XAICLIP_CPU_CAPABILITY").is_ok_and(|c| c.eq_ignore_ascii_case("avx512"));
        // CPUID leaf 7 exists on every CPU with AVX-512 (checked first).
        let leaf = direct::bf16_available().then(|| std::arch::x86_64::__cpuid_count(7, 0));
        let cpu = leaf.is_some_and(|l| l.edx >> 22 & 1 == 1 && l.edx >> 24 & 1 == 1);
        !capped && cpu && tile_permission()
    })
}

#[cfg(target_os = "linux")]
fn tile_permission() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a request for a permission; it changes nothing else and fails cleanly where unsupported.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn tile_permission() -> bool {
    false
}

/// Whether the tile kernel takes `g`: stride 1, and at least 16 input channels (fewer leave most of a
/// tile's K empty; the backend runs those, such as a U-Net's 1-channel input conv, in f32). A 1x1 conv
/// with fewer than 16 outputs (a segmentation head) also stays f32: one partly filled tile of outputs per
/// voxel block, so its time is reading the input, which f32 reads in place and bf16 must convert first.
pub(super) fn applies(g: &Conv3d) -> bool {
    let head = g.kernel == [1; 3] && g.cout < TILE;
    g.stride == [1; 3] && g.cin >= 16 && !head && available()
}

/// Channel pairs per K step and K steps: all pairs in one step up to 16, else steps of 16 (the input
/// and weights padded with zero pairs to a whole number of steps).
fn steps(g: &Conv3d) -> (usize, usize) {
    let pairs = g.cin.div_ceil(2);
    if pairs <= TILE {
        (pairs, 1)
    } else {
        (TILE, pairs.div_ceil(TILE))
    }
}

/// The weights as A tiles: [16-channel block][K step][tap][16 output channels][pairs], zero past `cout`
/// and past the last channel.
fn pack(weight: &[f32], g: &Conv3d, pairs: usize, k_steps: usize) -> Vec<u32> {
    let taps: usize = g.kernel.iter().product();
    let mut packed = vec![0u32; g.cout.div_ceil(TILE) * k_steps * taps * TILE * pairs];
    let w = |co: usize, ci: usize, t: usize| {
        if ci < g.cin {
            direct::bf16_bits(weight[(co * g.cin + ci) * taps + t])
        } else {
            0
        }
    };
    for co in 0..g.cout {
        for pair in 0..g.cin.div_ceil(2) {
            for t in 0..taps {
                let tile = ((co / TILE) * k_steps + pair / pairs) * taps + t;
                packed[(tile * TILE + co % TILE) * pairs + pair % pairs] =
                    w(co, 2 * pair, t) | w(co, 2 * pair + 1, t) << 16;
            }
        }
    }
    packed
}

/// The 64-byte tile configuration (palette 1): tiles 0-3 are C (16 x 16 f32), A tiles 16 rows of
/// `pairs` pairs, B tiles `pairs` rows of 16 pairs. `a` lists the A tiles, the rest of 4-7 are B.
#[repr(C, align(64))]
struct Config([u8; 64]);

impl Config {
    fn new(pairs: usize, a: std::ops::Range<usize>) -> Self {
        let mut c = [0u8; 64];
        c[0] = 1;
        for t in 0..8 {
            let (rows, bytes) = match t {
                0..4 => (TILE, 4 * TILE),
                t if a.contains(&t) => (TILE, 4 * pairs),
                _ => (pairs, 4 * TILE),
            };
            c[16 + 2 * t] = bytes as u8;
            c[48 + t] = rows as u8;
        }
        Config(c)
    }
}

/// The convolution of `x` (N images): (N, cout, od, oh, ow), bias added (`applies` must hold).
pub(super) fn conv3d(x: Input, weight: &[f32], bias: Option<&[f32]>, g: &Conv3d, post: Epilogue) -> Vec<f32> {
    assert!(applies(g), "amx::applies was checked");
    // Two channel blocks x two voxel runs where there are two blocks; one block x three runs otherwise.
    if g.cout > TILE {
        convolve::<2, 2>(x, weight, bias, g, post)
    } else {
        convolve::<1, 3>(x, weight, bias, g, post)
    }
}

/// The convolution in steps of CO blocks of 16 output channels x RUNS runs of 16 output voxels (C tiles
/// CO * RUNS <= 4; A tiles 4..4 + CO, B tiles the rest).
fn convolve<const CO: usize, const RUNS: usize>(
    x: Input,
    weight: &[f32],
    bias: Option<&[f32]>,
    g: &Conv3d,
    post: Epilogue,
) -> Vec<f32> {
    let (pairs, k_steps) = steps(g);
    let packed = pack(weight, g, pairs, k_steps);
    let [od, oh, ow] = g.output;
    let runs = od * oh * ow.div_ceil(TILE);
    let steps_of_runs = runs.div_ceil(RUNS);
    // A few tasks per thread: enough to balance, few enough that the tile configuration is loaded rarely.
    let per_task = steps_of_runs.div_ceil(4 * rayon::current_num_threads()).max(1);
    let config = Config::new(pairs, 4..4 + CO);
    let bias_tiles: Vec<f32> = (0..g.cout.div_ceil(TILE) * TILE)
        .flat_map(|co| [if co < g.cout { bias.map_or(0.0, |b| b[co]) } else { 0.0 }; TILE])
        .collect();
    let image = |one: Input, tasks_in_parallel, out_ptr: super::SharedMut| {
        let (input, row) = direct::padded::<Bf16Pair>(one.x, one.skip, g, TILE, k_steps * pairs);
        let job = Job {
            input: &input,
            row,
            packed: &packed,
            pairs,
            k_steps,
            runs,
            bias_tiles: &bias_tiles,
            g,
            config: &config,
        };
        // SAFETY: AMX is available (applies); a call stores the output runs of its steps only, inside the
        // buffer's capacity, and every tile read stays inside `input` and `packed`.
        let steps = |steps| unsafe { job.run::<CO, RUNS>(steps, out_ptr.ptr()) };
        if tasks_in_parallel {
            (0..steps_of_runs.div_ceil(per_task)).into_par_iter().for_each(|task| {
                let first = task * per_task;
                steps(first..(first + per_task).min(steps_of_runs))
            });
        } else {
            // The whole image in one task: one tile configuration.
            steps(0..steps_of_runs);
        }
    };
    // SAFETY: the steps 0..steps_of_runs cover every output run of every channel of the image.
    unsafe { direct::each_image(x, g, post, image) }
}

/// What every task of one image reads.
struct Job<'a> {
    input: &'a [Bf16Pair],
    row: usize,
    packed: &'a [u32],
    pairs: usize,
    k_steps: usize,
    /// Runs of 16 output voxels in the image (the last of each row may be partial).
    runs: usize,
    /// Each block's bias as a C tile (row m: the bias of channel 16 b + m, 0 past `cout`).
    bias_tiles: &'a [f32],
    g: &'a Conv3d,
    config: &'a Config,
}

impl Job<'_> {
    /// Steps `steps` of RUNS output runs each, every output channel.
    unsafe fn run<const CO: usize, const RUNS: usize>(&self, steps: std::ops::Range<usize>, out: *mut f32) {
        let g = self.g;
        let [kd, kh, kw] = g.kernel;
        let [od, oh, ow] = g.output;
        let (dp, hp) = (g.input[0] + 2 * g.pad[0], g.input[1] + 2 * g.pad[1]);
        let pair_plane = dp * hp * self.row;
        let per_row = ow.div_ceil(TILE);
        let taps = kd * kh * kw;
        let blocks = g.cout.div_ceil(TILE);
        let plane = od * oh * ow;
        // The step's runs as (output row, first voxel); a missing last run repeats the last one (the
        // same values stored twice).
        let run = |step: usize| -> [(usize, usize); RUNS] {
            std::array::from_fn(|j| {
                let r = (step * RUNS + j).min(self.runs - 1);
                (r / per_row, r % per_row * TILE)
            })
        };
        asm!("ldtilecfg [{}]", in(reg) self.config.0.as_ptr(), options(nostack, readonly));
        for b0 in (0..blocks).step_by(CO) {
            // Block b0 + i; a missing last block repeats b0 (computed, not stored).
            let block = |i: usize| if b0 + i < blocks { b0 + i } else { b0 };
            for step in steps.clone() {
                let run = run(step);
                // C starts at the bias (rows of block i).
                let c0 = |i: usize| self.bias_tiles.as_ptr().add(block(i) * TILE * TILE);
                asm!(
                    "tileloadd tmm0, [{p0} + {s}*1]",
                    "tileloadd tmm1, [{p1} + {s}*1]",
                    "tileloadd tmm2, [{p2} + {s}*1]",
                    "tileloadd tmm3, [{p3} + {s}*1]",
                    p0 = in(reg) c0(0), p1 = in(reg) c0(1 / RUNS), p2 = in(reg) c0(2 / RUNS), p3 = in(reg) c0(3 / RUNS),
                    s = in(reg) 4 * TILE,
                    options(nostack, readonly),
                );
                for k in 0..self.k_steps {
                    for (kz, ky, kx) in (0..kd).flat_map(|z| (0..kh).flat_map(move |y| (0..kw).map(move |x| (z, y, x))))
                    {
                        let t = (kz * kh + ky) * kw + kx;
                        // A: the weight tile of block i.
                        let a = |i: usize| {
                            self.packed.as_ptr().add(((block(i) * self.k_steps + k) * taps + t) * TILE * self.pairs)
                        };
                        // B: 16 voxels from the run's tap position in each of the step's pair planes.
                        let b = |j: usize| {
                            let (r, x0) = run[j];
                            let (z, y) = (r / oh, r % oh);
                            let line = ((k * self.pairs * dp + z + kz) * hp + y + ky) * self.row + x0 + kx;
                            self.input.as_ptr().add(line)
                        };
                        let (a_stride, b_stride) = (4 * self.pairs, 4 * pair_plane);
                        if CO == 2 {
                            asm!(
                                "tileloadd tmm4, [{a0} + {sa}*1]",
                                "tileloadd tmm5, [{a1} + {sa}*1]",
                                "tileloadd tmm6, [{b0} + {sb}*1]",
                                "tileloadd tmm7, [{b1} + {sb}*1]",
                                "tdpbf16ps tmm0, tmm4, tmm6",
                                "tdpbf16ps tmm1, tmm4, tmm7",
                                "tdpbf16ps tmm2, tmm5, tmm6",
                                "tdpbf16ps tmm3, tmm5, tmm7",
                                a0 = in(reg) a(0), a1 = in(reg) a(1), b0 = in(reg) b(0), b1 = in(reg) b(1),
                                sa = in(reg) a_stride, sb = in(reg) b_stride,
                                options(nostack, readonly),
                            );
                        } else {
                            asm!(
                                "tileloadd tmm4, [{a0} + {sa}*1]",
                                "tileloadd tmm5, [{b0} + {sb}*1]",
                                "tileloadd tmm6, [{b1} + {sb}*1]",
                                "tileloadd tmm7, [{b2} + {sb}*1]",
                                "tdpbf16ps tmm0, tmm4, tmm5",
                                "tdpbf16ps tmm1, tmm4, tmm6",
                                "tdpbf16ps tmm2, tmm4, tmm7",
                                a0 = in(reg) a(0), b0 = in(reg) b(0), b1 = in(reg) b(1), b2 = in(reg) b(2),
                                sa = in(reg) a_stride, sb = in(reg) b_stride,
                                options(nostack, readonly),
                            );
                        }
                    }
                }
                // C tile i * RUNS + j: channels of block b0 + i x the 16 voxels of run j, whole tiles
                // straight into the output's rows, edge tiles through `sums`.
                for i in 0..CO.min(blocks - b0) {
                    let rows = (g.cout - (b0 + i) * TILE).min(TILE);
                    for (j, &(r, x0)) in run.iter().enumerate() {
                        let n = (ow - x0).min(TILE);
                        let dst = out.add((b0 + i) * TILE * plane + r * ow + x0);
                        if rows == TILE && n == TILE {
                            store(i * RUNS + j, dst, 4 * plane);
                        } else {
                            let mut sums = [[0f32; TILE]; TILE];
                            store(i * RUNS + j, sums.as_mut_ptr().cast(), 4 * TILE);
                            for (m, sums) in sums.iter().enumerate().take(rows) {
                                std::ptr::copy_nonoverlapping(sums.as_ptr(), dst.add(m * plane), n);
                            }
                        }
                    }
                }
            }
        }
        asm!("tilerelease", options(nostack, nomem));
    }
}

/// Stores C tile `c` (0-3) as 16 rows of 16 f32 at `p`, `stride` bytes apart.
#[inline(always)]
unsafe fn store(c: usize, p: *mut f32, stride: usize) {
    match c {
        0 => asm!("tilestored [{p} + {s}*1], tmm0", p = in(reg) p, s = in(reg) stride, options(nostack)),
        1 => asm!("tilestored [{p} + {s}*1], tmm1", p = in(reg) p, s = in(reg) stride, options(nostack)),
        2 => asm!("tilestored [{p} + {s}*1], tmm2", p = in(reg) p, s = in(reg) stride, options(nostack)),
        _ => asm!("tilestored [{p} + {s}*1], tmm3", p = in(reg) p, s = in(reg) stride, options(nostack)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::direct::tests::{alone, case, max_abs_diff, on_two_threads, rounded_reference, SkipCase};

    #[test]
    fn a_segmentation_head_stays_f32_and_wider_1x1_convs_take_the_tiles() {
        let conv = |cout| Conv3d::new(&[16, 16, 1, 64, 64], &[cout, 16, 1, 1, 1], [1; 3], [0; 3]).unwrap();
        assert!(!applies(&conv(14)), "a 14-class head");
        assert_eq!(applies(&conv(16)), available());
        let three = Conv3d::new(&[16, 16, 1, 64, 64], &[14, 16, 1, 3, 3], [1; 3], [0, 1, 1]).unwrap();
        assert_eq!(applies(&three), available(), "a 3x3 with few outputs still takes the tiles");
    }

    #[test]
    fn tile_convolution_matches_im2col_on_the_rounded_operands() {
        if !available() {
            println!("SKIP: this CPU or kernel has no AMX-BF16; the tile kernel never runs here");
            return;
        }
        // Pairs below one step (16, 24, odd 17 channels), several steps with a partial one (40, 70),
        // Cout below, at and past a block (5, 16, 17, 40), rows shorter than, equal to and past a run
        // (7, 16, 33), a last step of fewer runs, a 3-D kernel, 1x1, two images.
        for (seed, &(n, cin, cout, input, kernel, pad)) in [
            (1, 16, 16, [1, 9, 16], [1, 3, 3], [0, 1, 1]),
            (2, 17, 5, [1, 5, 33], [1, 3, 3], [0, 1, 1]),
            (1, 24, 40, [1, 6, 7], [1, 3, 3], [0, 1, 1]),
            (1, 40, 17, [1, 4, 20], [1, 3, 3], [0, 1, 1]),
            (1, 70, 33, [3, 5, 9], [3, 3, 3], [1, 1, 1]),
            (2, 32, 48, [1, 8, 8], [1, 1, 1], [0, 0, 0]),
        ]
        .iter()
        .enumerate()
        {
            let (g, x, w, b) = case((n, cin, cout), input, kernel, pad, 5 * seed as u64);
            let rounded = rounded_reference(&x, &w, &b, &g);
            let tiles = conv3d(x[..].into(), &w, Some(&b), &g, Epilogue::None);
            assert_eq!(tiles.len(), rounded.len());
            // Sums of up to ~1900 products of O(1) in another order: ~1e-5 absolute; a NaN fails.
            let err = max_abs_diff(&tiles, &rounded);
            assert!(err < 1e-4, "case {seed} (cin {cin}, cout {cout}): max |diff| {err} against the rounded operands");
        }
    }

    #[test]
    fn the_tile_kernel_reads_a_skip_in_place_and_gives_each_image_alone_the_same_bits() {
        if !available() {
            println!("SKIP: this CPU or kernel has no AMX-BF16; the tile kernel never runs here");
            return;
        }
        // Four images on two threads: the batch runs one task per image, each image alone its runs in
        // parallel tasks.
        let c = SkipCase::new(4, (16, 16), (7, 21), 20);
        let (weight, bias) = (&c.weight, Some(&c.bias[..]));
        let (whole, split, each) = on_two_threads(|| {
            let whole = conv3d(c.joined[..].into(), weight, bias, &c.g, Epilogue::None);
            (
                whole,
                conv3d(c.input(), weight, bias, &c.g, Epilogue::None),
                alone(&c, |x, g| conv3d(x, weight, bias, g, Epilogue::None)),
            )
        });
        assert_eq!(split, whole);
        assert_eq!(each, whole, "each image alone: bit for bit");
    }
}
