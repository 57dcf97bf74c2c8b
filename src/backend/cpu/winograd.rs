//! Winograd F(2x2, 3x3) for the 2-D U-Nets' 3x3, padding-1 convolutions in f32 on AVX-512 (Lavin & Gray,
//! "Fast Algorithms for Convolutional Neural Networks", 2016): each 2 x 2 output tile of a channel is
//! `A^T [sum over input channels of (G w G^T) . (B^T d B)] A`, 16 products per input and output channel
//! where the direct kernel makes 36. The transforms are additions, the weights' done once per call.
//! The 16 transform positions are 16 small GEMMs (output channels x input channels x tiles) over a
//! chunk of 32 tiles, vectorised over 16 tiles: 8 output channels x 32 tiles stay in registers while
//! the input channels stream through, as in the direct kernel. A vector holds two groups of 8 tiles
//! (16 output columns each), from one tile row or, on planes 16 wide, from two: 16² planes fill whole
//! vectors (AMD EPYC Zen 4, batch 16: 64->64 @16 3.4-3.9 -> 1.8-2.1 ms, where half of each vector
//! was empty). On planes of 5 x 5 to 8 x 8 a vector holds all of one slice's tiles, picked from the
//! plane with permutes (batch 16: 128->128 @8 2.9 -> 1.2 ms, 64->128 @8 1.5 -> 0.6 ms, from im2col +
//! GEMM).
//!
//! With `--precision bf16` on a CPU with AVX512-BF16 but no AMX, the 16 GEMMs run on `vdpbf16ps` (two
//! input channels per lane, f32 sums) over transformed inputs and weights rounded to bf16
//! ([`conv3d_bf16`]); the transforms stay f32 (AMD Zen 4, batch 16 at 256², against the direct bf16
//! kernel: bundled U-Net 169 -> 155 ms, paper-sized 649 -> 478 ms; f32 175 and 645 ms).
//!
//! Rounding: an input is a sum of up to 4 input values before its product, an output a sum of up to 9
//! products after its channel sum; the weights' transform sums 3 values twice (scaled by 1/2, exact). Against
//! the direct sums that is an error of a few f32 ulps of the largest partial sum (the tests bound it);
//! every output is computed alike on any number of threads, so results are the same bits on each.
//! im2col + GEMM (`volume::im2col_conv3d`) is the reference it is tested against.

mod f4x4;

use super::direct::{self, Bf16Pair, Input};
use super::elementwise::Epilogue;
use crate::backend::volume::Conv3d;
use rayon::prelude::*;
use std::arch::x86_64::*;
use std::cell::RefCell;

/// Transform positions (4 x 4) of one tile.
const XI: usize = 16;
/// Output channels held in registers at once.
const BLOCK: usize = 8;
/// Tiles per vector.
const LANES: usize = 16;

/// Whether the kernel applies: a 3x3 kernel (1 deep) with padding 1 in plane, stride 1, on a CPU with
/// AVX-512F, rows of at least 16 outputs (8 tiles: half a vector) or small planes whose 9-16 tiles fill
/// most of one vector (see [`small_planes`]), and enough input channels for the transforms to pay (the
/// 1-channel input conv stays direct), with transformed weights that stay in L2 (up to 128 x 128
/// channels, 1 MiB: every chunk reads all of them; 256->256 on 16² planes ran at half the speed of GEMM)
/// or on small planes, where a chunk is a whole image whose GEMMs outweigh one read of the weights from
/// L3 (paper-sized U-Net at 128², batch 16: 256->256 @8 8.6 -> 5.1-5.7 ms, 128->256 @8 4.4 -> 2.4-2.7).
pub(super) fn applies(g: &Conv3d) -> bool {
    g.kernel == [1, 3, 3]
        && g.pad == [0, 1, 1]
        && g.stride == [1; 3]
        && g.cin >= 8
        && (small_planes(g) || (g.output[2] >= 16 && g.cin * g.cout <= 128 * 128))
        && direct::capability() == Some(direct::Capability::Avx512)
}

/// Planes of 5 x 5 to 8 x 8 (the U-Nets' bottom at 128² inputs): a vector holds all of a slice's tiles
/// and the input plane fits four vectors, from which each transform position is picked with permutes
/// (a tile row of 4 tiles would fill a quarter of a vector; these layers went through im2col + GEMM at
/// about 100 GFLOP/s).
fn small_planes(g: &Conv3d) -> bool {
    g.output[1..].iter().all(|s| (5..=8).contains(s))
}

/// `G w G^T` of each (output, input) channel's 3x3 kernel, as [block][position][input channel][block
/// output channels], zero beyond `cout`. Computed per call (as the direct kernel packs its weights):
/// `G w` first, then `(G w) G^T`, 84 products a kernel, for the 8 output channels of a block at once
/// (lane j: channel j), whose 16 positions are 16 runs of 8 values; one task per block. Kernel by
/// kernel in scalar code, the transform ran alone before the convolution's parallel part and took
/// 11.5% of the CPU time of a batch-1 forward of the bundled U-Net at 128² (now ~5%; that forward 4.5 ->
/// 4.3 ms, batch 16 42.1 -> 41.7 ms, medians of 10 and 6 interleaved runs on Zen 4).
fn transform_weights(weight: &[f32], g: &Conv3d) -> Vec<f32> {
    let cin = g.cin;
    let mut u = vec![0f32; g.cout.div_ceil(BLOCK) * XI * cin * BLOCK];
    u.par_chunks_mut(XI * cin * BLOCK).enumerate().for_each(|(block, u)| {
        let channels = BLOCK.min(g.cout - block * BLOCK);
        for ci in 0..cin {
            // Tap t of the block's kernels from input channel ci (zero past cout).
            let k: [[f32; BLOCK]; 9] = std::array::from_fn(|t| {
                std::array::from_fn(
                    |j| if j < channels { weight[((block * BLOCK + j) * cin + ci) * 9 + t] } else { 0.0 },
                )
            });
            // SAFETY: `applies` checked AVX-512F (which implies the 256-bit vectors this compiles to).
            unsafe {
                transform_block(&k, |position, values| {
                    u[(position * cin + ci) * BLOCK..][..BLOCK].copy_from_slice(&values)
                })
            };
        }
    });
    u
}

/// `G k G^T` of a block's 8 kernels (`k[tap][channel]`), each position handed to `store` as 8 lanes.
#[target_feature(enable = "avx512f")]
unsafe fn transform_block(k: &[[f32; BLOCK]; 9], mut store: impl FnMut(usize, [f32; BLOCK])) {
    type Lanes = [f32; BLOCK];
    let each = |f: &dyn Fn(usize) -> f32| -> Lanes { std::array::from_fn(f) };
    // One row (or column) of G applied to three values, lane by lane.
    let gt = |a: &Lanes, b: &Lanes, c: &Lanes| -> [Lanes; 4] {
        [*a, each(&|j| 0.5 * (a[j] + b[j] + c[j])), each(&|j| 0.5 * (a[j] - b[j] + c[j])), *c]
    };
    let cols: [[Lanes; 4]; 3] = std::array::from_fn(|x| gt(&k[x], &k[3 + x], &k[6 + x]));
    // Row i of the three columns (a transpose, so not an iterator over one of them).
    #[allow(clippy::needless_range_loop)]
    for i in 0..4 {
        for (x, values) in gt(&cols[0][i], &cols[1][i], &cols[2][i]).into_iter().enumerate() {
            store(i * 4 + x, values);
        }
    }
}

thread_local! {
    /// Each thread's transformed inputs and products of one chunk of 32 tiles (reused: 49-280 KiB at
    /// 16-128 input channels, which glibc would otherwise map and unmap per task).
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The convolution of `x` (N images): (N, cout, od, oh, ow), bias added (`applies` must hold).
pub(super) fn conv3d(x: Input, weight: &[f32], bias: Option<&[f32]>, g: &Conv3d, post: Epilogue) -> Vec<f32> {
    run(x, transform_weights(weight, g), bias, g, post, (|job: &Job| job.chunks(), F32::CHUNK))
}

/// The same on F(4x4, 3x3) where `f4x4::applies` (rows of 64 outputs and more; `--precision tf32`).
pub(super) fn conv3d_f4x4(x: Input, weight: &[f32], bias: Option<&[f32]>, g: &Conv3d, post: Epilogue) -> Vec<f32> {
    if !f4x4::applies(g) {
        return conv3d(x, weight, bias, g, post);
    }
    run(x, f4x4::transform_weights(weight, g), bias, g, post, (f4x4::chunks, f4x4::chunk))
}

/// The same with the 16 GEMMs on bf16 operands and f32 accumulation (`vdpbf16ps`, two input channels
/// per lane; `applies` and `direct::bf16_available` must hold): the transformed inputs and weights are
/// rounded to bf16, the transforms stay f32. For CPUs with AVX512-BF16 but no AMX (AMD Zen 4), where
/// the direct bf16 kernel ran no faster than f32 Winograd: 36 products per output at twice the rate
/// against 16.
pub(super) fn conv3d_bf16(x: Input, weight: &[f32], bias: Option<&[f32]>, g: &Conv3d, post: Epilogue) -> Vec<f32> {
    assert!(direct::bf16_available(), "direct::bf16_available was checked");
    run(x, pair_weights(&transform_weights(weight, g), g.cin), bias, g, post, (|job: &Job| job.chunks(), Bf16::CHUNK))
}

/// A chunk function and the number of chunks per image it takes.
type Chunks = (fn(&Job) -> usize, unsafe fn(&Job, usize, &mut Vec<f32>, *mut f32));

/// The convolution with transformed weights `u`, image by image as `direct::each_image` schedules them,
/// each image's chunks computed by `chunk`.
fn run(x: Input, u: Vec<f32>, bias: Option<&[f32]>, g: &Conv3d, post: Epilogue, (chunks, chunk): Chunks) -> Vec<f32> {
    assert!(applies(g), "winograd::applies was checked");
    let image = |one: Input, in_parallel, out: super::SharedMut| {
        let job = Job::new(one, &u, bias, g);
        let one_chunk = |k| {
            SCRATCH.with_borrow_mut(|scratch| {
                // SAFETY: `applies` checked AVX-512F (and the caller AVX512-BF16 for bf16); the call
                // writes the tiles of chunk k of each output channel of this image only, inside its output.
                unsafe { chunk(&job, k, scratch, out.ptr()) }
            })
        };
        let chunks = chunks(&job);
        if in_parallel {
            (0..chunks).into_par_iter().for_each(one_chunk);
        } else {
            (0..chunks).for_each(one_chunk);
        }
    };
    // SAFETY: the chunks cover every group of tiles, so every output value of the image is stored above.
    unsafe { direct::each_image(x, g, post, image) }
}

/// Transformed weights as bf16 pairs of input channels (2c low, 2c + 1 high, zero past `cin`), as
/// [block][position][pair][block output channels], each pair's 32 bits kept in an f32 slot (moved,
/// never computed with).
fn pair_weights(u: &[f32], cin: usize) -> Vec<f32> {
    let pairs = cin.div_ceil(2);
    let rows = u.len() / (cin * BLOCK);
    let mut out = vec![0f32; rows * pairs * BLOCK];
    for (row, out) in u.chunks_exact(cin * BLOCK).zip(out.chunks_exact_mut(pairs * BLOCK)) {
        for (cp, out) in out.chunks_exact_mut(BLOCK).enumerate() {
            for (j, o) in out.iter_mut().enumerate() {
                let high = row.get((2 * cp + 1) * BLOCK + j).copied().unwrap_or(0.0);
                *o = f32::from_bits(Bf16Pair::new(row[2 * cp * BLOCK + j], high).0);
            }
        }
    }
    out
}

/// How a chunk's 16 GEMMs multiply: f32 FMAs, or bf16 pairs of input channels on `vdpbf16ps`.
trait Gemm {
    /// The chunk function compiled for this GEMM's instructions.
    const CHUNK: unsafe fn(&Job, usize, &mut Vec<f32>, *mut f32);
    /// Rows of the GEMMs' depth: input channels, or pairs of them.
    fn depth(cin: usize) -> usize;
    /// Turns the chunk's transformed inputs (`cin` channels `V_CHANNEL` apart, `halves` vectors per
    /// position) into the GEMMs' rows, in place.
    unsafe fn prepare(v: *mut f32, cin: usize, halves: usize);
    /// m[j][t] = sum over the depth of u[d][j] v[d][t] for BLOCK output channels and CHUNKS vectors of
    /// tiles, in registers (rows of v are `stride` apart, of m `CHUNK`).
    unsafe fn gemm<const CHUNKS: usize>(v: *const f32, u: *const f32, m: *mut f32, depth: usize, stride: usize);
}

struct F32;

impl Gemm for F32 {
    const CHUNK: unsafe fn(&Job, usize, &mut Vec<f32>, *mut f32) = chunk_f32;

    fn depth(cin: usize) -> usize {
        cin
    }

    #[inline(always)]
    unsafe fn prepare(_: *mut f32, _: usize, _: usize) {}

    #[inline(always)]
    unsafe fn gemm<const CHUNKS: usize>(v: *const f32, u: *const f32, m: *mut f32, cin: usize, stride: usize) {
        let mut acc = [[_mm512_setzero_ps(); CHUNKS]; BLOCK];
        for ci in 0..cin {
            let mut x = [_mm512_setzero_ps(); CHUNKS];
            for (c, x) in x.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(v.add(ci * stride + c * LANES));
            }
            for (j, acc) in acc.iter_mut().enumerate() {
                let w = _mm512_set1_ps(*u.add(ci * BLOCK + j));
                for (a, &x) in acc.iter_mut().zip(&x) {
                    *a = _mm512_fmadd_ps(x, w, *a);
                }
            }
        }
        store_products(acc, m);
    }
}

struct Bf16;

impl Gemm for Bf16 {
    const CHUNK: unsafe fn(&Job, usize, &mut Vec<f32>, *mut f32) = chunk_bf16;

    fn depth(cin: usize) -> usize {
        cin.div_ceil(2)
    }

    /// Pair p (channels 2p and 2p + 1, as `Bf16Pair::new` packs them) goes where channel p was, pairs in
    /// order: channel p was read by pair p / 2, already written (pair 0 reads each vector before it
    /// writes it).
    #[inline(always)]
    unsafe fn prepare(v: *mut f32, cin: usize, halves: usize) {
        let vector = |c: usize, xi: usize, half: usize| v.add(c * V_CHANNEL + xi * CHUNK + half * LANES);
        for p in 0..cin.div_ceil(2) {
            for xi in 0..XI {
                for half in 0..halves {
                    let low = vector(2 * p, xi, half).cast::<[f32; LANES]>().read();
                    let high = if 2 * p + 1 < cin {
                        vector(2 * p + 1, xi, half).cast::<[f32; LANES]>().read()
                    } else {
                        [0.0; LANES]
                    };
                    let pairs: [u32; LANES] = std::array::from_fn(|t| Bf16Pair::new(low[t], high[t]).0);
                    vector(p, xi, half).cast::<[u32; LANES]>().write(pairs);
                }
            }
        }
    }

    #[inline(always)]
    unsafe fn gemm<const CHUNKS: usize>(v: *const f32, u: *const f32, m: *mut f32, pairs: usize, stride: usize) {
        let mut acc = [[_mm512_setzero_ps(); CHUNKS]; BLOCK];
        for p in 0..pairs {
            // The same 512 bits seen as 32 bf16s.
            let bh = |bits: __m512i| std::mem::transmute::<__m512i, __m512bh>(bits);
            let x: [__m512bh; CHUNKS] =
                std::array::from_fn(|c| bh(_mm512_loadu_si512(v.add(p * stride + c * LANES).cast())));
            for (j, acc) in acc.iter_mut().enumerate() {
                let w = bh(_mm512_set1_epi32(*u.add(p * BLOCK + j).cast::<i32>()));
                for (a, &x) in acc.iter_mut().zip(&x) {
                    *a = _mm512_dpbf16_ps(*a, x, w);
                }
            }
        }
        store_products(acc, m);
    }
}

/// The GEMMs of one block of output channels, one per transform position: the chunk's `halves` vectors
/// of tiles (position xi at `v + xi * CHUNK`, depth rows `stride` apart) times the block's transformed
/// weights `u` (position xi at `u + xi * depth * BLOCK`), into m (position xi at `m + xi * BLOCK * CHUNK`).
#[inline(always)]
unsafe fn block_gemms<G: Gemm>(
    u: *const f32,
    v: *const f32,
    m: *mut f32,
    positions: usize,
    depth: usize,
    stride: usize,
    halves: usize,
) {
    for xi in 0..positions {
        let (ux, vx, mx) = (u.add(xi * depth * BLOCK), v.add(xi * CHUNK), m.add(xi * BLOCK * CHUNK));
        if halves == 2 {
            G::gemm::<2>(vx, ux, mx, depth, stride);
        } else {
            G::gemm::<1>(vx, ux, mx, depth, stride);
        }
    }
}

/// The GEMMs' sums into m (rows `CHUNK` apart).
#[inline(always)]
unsafe fn store_products<const CHUNKS: usize>(acc: [[__m512; CHUNKS]; BLOCK], m: *mut f32) {
    for (j, acc) in acc.iter().enumerate() {
        for (c, &a) in acc.iter().enumerate() {
            _mm512_storeu_ps(m.add(j * CHUNK + c * LANES), a);
        }
    }
}

/// Tiles per group: a tile row is cut into groups of 8 tiles (16 output columns), and each vector of
/// tiles holds two groups, from the same tile row or (on planes 16 wide or less) from two, so that narrow
/// planes fill whole vectors.
const GROUP: usize = LANES / 2;

/// What every chunk of one image reads: its own channels, then the skip's (read in place).
struct Job<'a> {
    channels: Vec<&'a [f32]>,
    /// A row of zeros, read for the padding rows above and below the image (no branch per row).
    zeros: Vec<f32>,
    u: &'a [f32],
    bias: Option<&'a [f32]>,
    g: &'a Conv3d,
    /// On small planes, where each transform position is picked from the plane (None: tile rows).
    picks: Option<Picks>,
}

impl<'a> Job<'a> {
    fn new(input: Input<'a>, u: &'a [f32], bias: Option<&'a [f32]>, g: &'a Conv3d) -> Self {
        let zeros = vec![0.0; g.input[2]];
        let picks = small_planes(g).then(|| Picks::new(g));
        Self { channels: (0..g.cin).map(|ci| input.channel(g, ci)).collect(), zeros, u, bias, g, picks }
    }

    /// Chunks of the image: of four groups of tiles, or of two slices on small planes.
    fn chunks(&self) -> usize {
        match self.picks {
            Some(_) => self.g.output[0].div_ceil(CHUNK / LANES),
            None => self.groups().div_ceil(CHUNK / GROUP),
        }
    }

    /// Groups per tile row, and tile rows per slice.
    fn grid(&self) -> (usize, usize) {
        let [_, oh, ow] = self.g.output;
        (ow.div_ceil(2).div_ceil(GROUP), oh.div_ceil(2))
    }

    /// Groups of tiles in the image: slices x tile rows x groups per tile row.
    fn groups(&self) -> usize {
        let (per_row, rows) = self.grid();
        self.g.output[0] * rows * per_row
    }

    /// Group q as (slice, tile row, first output column).
    fn group(&self, q: usize) -> (usize, usize, usize) {
        let (per_row, rows) = self.grid();
        (q / (per_row * rows), q / per_row % rows, 2 * GROUP * (q % per_row))
    }

    /// Where the N input rows y0 - 1 .. y0 - 1 + N of slice z start in each channel (None: the padding
    /// above or below the image): the patch rows of a tile row whose first output row is y0.
    fn rows<const N: usize>(&self, z: usize, y0: usize) -> [Option<usize>; N] {
        let [_, h, w] = self.g.input;
        std::array::from_fn(|k| (y0 + k).checked_sub(1).filter(|&y| y < h).map(|y| (z * h + y) * w))
    }
}

/// Tiles per chunk: the tiles whose transformed inputs and products stay in cache between the
/// transforms and the GEMMs (two vectors, four groups).
const CHUNK: usize = 2 * LANES;

/// One input channel's transformed chunk: its 16 positions, then a vector of padding. Positions at fixed
/// offsets let the transform store through one pointer (with the positions `cin` chunks apart, the
/// compiler kept 16 pointers on the stack); the padding staggers the channels' cache sets for the GEMMs,
/// which read one position of every channel (2 KiB apart, 16 channels would share 4 of L1's 64 sets).
const V_CHANNEL: usize = XI * CHUNK + LANES;

/// Chunk k of every output channel (groups 4k..4k + 4, or slices 2k and 2k + 1 on small planes): the
/// inputs' transform, the 16 GEMMs and the outputs' transform run back to back on data in L1/L2.
#[target_feature(enable = "avx512f")]
unsafe fn chunk_f32(job: &Job, k: usize, scratch: &mut Vec<f32>, out: *mut f32) {
    chunk::<F32>(job, k, scratch, out)
}

/// [`chunk_f32`] with bf16 GEMMs.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn chunk_bf16(job: &Job, k: usize, scratch: &mut Vec<f32>, out: *mut f32) {
    chunk::<Bf16>(job, k, scratch, out)
}

#[inline(always)]
unsafe fn chunk<G: Gemm>(job: &Job, k: usize, scratch: &mut Vec<f32>, out: *mut f32) {
    let g = job.g;
    let [od, oh, ow] = g.output;
    let cin = g.cin;
    let need = cin * V_CHANNEL + XI * BLOCK * CHUNK;
    if scratch.len() < need {
        scratch.resize(need, 0.0);
    }
    let (v, m) = scratch.split_at_mut(cin * V_CHANNEL);
    let (v, m) = (v.as_mut_ptr(), m.as_mut_ptr());
    let places = match &job.picks {
        Some(picks) => picks.transform(job, k, v),
        None => transform_rows(job, k, v),
    };
    let halves = places.halves();
    G::prepare(v, cin, halves);
    let depth = G::depth(cin);
    let ilo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    let ihi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    for block in 0..g.cout.div_ceil(BLOCK) {
        // The 16 GEMMs of this block of output channels.
        let u = job.u.as_ptr().add(block * XI * depth * BLOCK);
        block_gemms::<G>(u, v, m, XI, depth, V_CHANNEL, halves);
        // A^T m A, bias added, even and odd columns interleaved into the output rows.
        for j in 0..BLOCK.min(g.cout - block * BLOCK) {
            let co = block * BLOCK + j;
            let bias = _mm512_set1_ps(job.bias.map_or(0.0, |b| b[co]));
            let channel = out.add(co * od * oh * ow);
            for half in 0..halves {
                let mut s = [[_mm512_setzero_ps(); 2]; 4];
                for (k, s) in s.iter_mut().enumerate() {
                    let at = m.add((k * 4 * BLOCK + j) * CHUNK + half * LANES);
                    let step = BLOCK * CHUNK;
                    *s = at_(
                        _mm512_loadu_ps(at),
                        _mm512_loadu_ps(at.add(step)),
                        _mm512_loadu_ps(at.add(2 * step)),
                        _mm512_loadu_ps(at.add(3 * step)),
                    );
                }
                // y[c][dy]: column c (even, odd) of row dy of each tile.
                let y = [at_(s[0][0], s[1][0], s[2][0], s[3][0]), at_(s[0][1], s[1][1], s[2][1], s[3][1])];
                for (dy, (even, odd)) in y[0].iter().zip(&y[1]).enumerate() {
                    let (r0, r1) = (_mm512_add_ps(*even, bias), _mm512_add_ps(*odd, bias));
                    // Tile t's two columns at lanes 2t, 2t + 1 of the pair (tiles 0-7, then 8-15).
                    let columns = [_mm512_permutex2var_ps(r0, ilo, r1), _mm512_permutex2var_ps(r0, ihi, r1)];
                    places.store(channel, half, dy, columns);
                }
            }
        }
    }
}

/// Where a chunk's outputs go, each output row dy (0, 1) of a vector of tiles given as the tiles' two
/// columns interleaved (32 values).
enum Places {
    /// Per group of tiles: where its two output rows start in an output channel (None past the image's
    /// last row) and how many columns they have; as many vectors as `halves`.
    Rows { targets: [[Option<usize>; 2]; CHUNK / GROUP], widths: [usize; CHUNK / GROUP], halves: usize },
    /// The slices of the chunk's vectors (one or two), the tile rows and tiles per tile row of each, and
    /// the output plane's height and width.
    Planes { slices: std::ops::Range<usize>, tiles: (usize, usize), plane: [usize; 2] },
}

impl Places {
    fn halves(&self) -> usize {
        match self {
            Places::Rows { halves, .. } => *halves,
            Places::Planes { slices, .. } => slices.len(),
        }
    }

    /// Stores row dy of vector `half`'s tiles into `channel` (one output channel of the image).
    #[inline(always)]
    unsafe fn store(&self, channel: *mut f32, half: usize, dy: usize, columns: [__m512; 2]) {
        match self {
            Places::Rows { targets, widths, .. } => {
                // Lanes 0-7 of the tiles are the first group's 16 columns, lanes 8-15 the second's.
                for (i, columns) in columns.into_iter().enumerate() {
                    if let Some(at) = targets[2 * half + i][dy] {
                        store(channel.add(at), columns, widths[2 * half + i]);
                    }
                }
            }
            Places::Planes { slices, tiles: (rows, per_row), plane: [oh, ow] } => {
                // Tile row ty's 2 * per_row columns follow each other; output row 2 ty + dy takes ow of them.
                let mut line = [0f32; 2 * LANES];
                _mm512_storeu_ps(line.as_mut_ptr(), columns[0]);
                _mm512_storeu_ps(line.as_mut_ptr().add(LANES), columns[1]);
                let z = slices.start + half;
                for ty in (0..*rows).filter(|ty| 2 * ty + dy < *oh) {
                    let at = channel.add((z * oh + 2 * ty + dy) * ow);
                    std::ptr::copy_nonoverlapping(line.as_ptr().add(2 * ty * per_row), at, *ow);
                }
            }
        }
    }
}

/// The input transform of chunk k on tile rows, every input channel: two groups of 8 tiles per vector.
#[inline(always)]
unsafe fn transform_rows(job: &Job, k: usize, v: *mut f32) -> Places {
    let [_, oh, ow] = job.g.output;
    // The chunk's groups, two per vector (None past the image's last group), and their input rows.
    let (q0, total) = (k * CHUNK / GROUP, job.groups());
    let groups: [Option<(usize, usize, usize)>; CHUNK / GROUP] =
        std::array::from_fn(|i| (q0 + i < total).then(|| job.group(q0 + i)));
    let rows = groups.map(|group| group.map_or([None; 4], |(z, ty, _)| job.rows(z, 2 * ty)));
    let halves = (total - q0).min(CHUNK / GROUP).div_ceil(2);
    let columns = groups.map(|group| group.map_or(0, |(_, _, x)| x as isize - 1));
    // The two input rows the next tile row reads first, fetched into L2 a tile row ahead (2 chunks on
    // 128² planes): short rows, 16 channels x 2 rows apart, defeat the hardware prefetcher, and the
    // loads of those rows stalled on L3 (Zen 4, batch 16: forward 128² 59 -> 54 ms, 256² 278 -> 228 ms).
    let ahead = groups.map(|group| {
        group.and_then(|(z, ty, x)| {
            let [_, _, next0, next1] = job.rows(z, 2 * (ty + 1));
            (2 * (ty + 1) < oh).then_some(([next0, next1], x))
        })
    });
    for (ci, channel) in job.channels.iter().enumerate() {
        for &([r0, r1], x) in ahead.iter().flatten() {
            for at in [r0, r1].into_iter().flatten() {
                // The first and the last (or the row's last) of the group's patch columns x - 1 ..= x + 16;
                // where those 72 bytes span three lines, the middle one is left to the hardware.
                let p = channel.as_ptr().add(at + x).wrapping_sub(1);
                _mm_prefetch::<_MM_HINT_T1>(p as *const i8);
                _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add((2 * GROUP + 1).min(ow - x)) as *const i8);
            }
        }
        for half in 0..halves {
            let mut lines = [[job.zeros.as_ptr(); 4]; 2];
            for (i, lines) in lines.iter_mut().enumerate() {
                for (line, row) in lines.iter_mut().zip(&rows[2 * half + i]) {
                    if let Some(at) = row {
                        // SAFETY: `rows` gives the start of a row inside the channel.
                        *line = channel.as_ptr().add(*at);
                    }
                }
            }
            let sources = [(lines[0], columns[2 * half]), (lines[1], columns[2 * half + 1])];
            transform_input(sources, ow, v.add(ci * V_CHANNEL + half * LANES));
        }
    }
    // Where each group's two output rows start in an output channel (None past the image's last row),
    // and how many columns they have.
    let targets = groups.map(|group| {
        std::array::from_fn(|dy| {
            group.and_then(|(z, ty, x)| (2 * ty + dy < oh).then(|| (z * oh + 2 * ty + dy) * ow + x))
        })
    });
    let widths = groups.map(|group| group.map_or(0, |(_, _, x)| ow - x));
    Places::Rows { targets, widths, halves }
}

/// B^T d B of 16 tiles of one input channel, two groups of 8: each source gives the four rows of its
/// tile row (a row of zeros for the padding) and the column its 4 x 4 patches start at (one left of
/// its first output column). Columns outside the row read as zeros (masked loads).
/// (Loops, not closures: a closure's intrinsics are not inlined into the AVX-512 caller.)
#[inline(always)]
unsafe fn transform_input(sources: [([*const f32; 4], isize); 2], w: usize, v: *mut f32) {
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    let [(la, xa), (lb, xb)] = sources;
    let mut t = [[_mm512_setzero_ps(); 4]; 4];
    for (t, (pa, pb)) in t.iter_mut().zip(la.iter().zip(&lb)) {
        // The 16 columns of each group from its first patch column, and the same two further on.
        let (a, b) = (load(*pa, xa, w), load(*pb, xb, w));
        let (c, d) = (load(*pa, xa + 2, w), load(*pb, xb + 2, w));
        *t = bt(
            _mm512_permutex2var_ps(a, even, b),
            _mm512_permutex2var_ps(a, odd, b),
            _mm512_permutex2var_ps(c, even, d),
            _mm512_permutex2var_ps(c, odd, d),
        );
    }
    store_transformed(t, v);
}

/// Stores the column transforms of `t` (the row transforms B^T d of a patch's four rows): 16 vectors a
/// chunk apart (position 4k + c at `v + (4k + c) * CHUNK`).
#[inline(always)]
unsafe fn store_transformed(t: [[__m512; 4]; 4], v: *mut f32) {
    // Columns c of the four row transforms (a transpose, so not an iterator over one row).
    #[allow(clippy::needless_range_loop)]
    for c in 0..4 {
        let col = bt(t[0][c], t[1][c], t[2][c], t[3][c]);
        for (k, &value) in col.iter().enumerate() {
            _mm512_storeu_ps(v.add((k * 4 + c) * CHUNK), value);
        }
    }
}

/// On small planes, where lane t (tile t of a slice, tile rows first) of transform position (i, j) reads
/// the input plane: its index into the first 32 values (of four vectors holding the plane) or the next
/// 32, as permutes take them, and masks of the lanes each half gives (neither: padding, a zero).
struct Picks {
    index: [[i32; LANES]; XI],
    low: [u16; XI],
    high: [u16; XI],
    /// Tile rows and tiles per tile row.
    tiles: (usize, usize),
}

impl Picks {
    fn new(g: &Conv3d) -> Self {
        let [_, h, w] = g.input;
        let [_, oh, ow] = g.output;
        let tiles = (oh.div_ceil(2), ow.div_ceil(2));
        let mut picks = Picks { index: [[0; LANES]; XI], low: [0; XI], high: [0; XI], tiles };
        for (i, j) in (0..4).flat_map(|i| (0..4).map(move |j| (i, j))) {
            for t in 0..tiles.0 * tiles.1 {
                let (y, x) = ((2 * (t / tiles.1) + i).checked_sub(1), (2 * (t % tiles.1) + j).checked_sub(1));
                if let (Some(y), Some(x)) = (y.filter(|&y| y < h), x.filter(|&x| x < w)) {
                    let at = y * w + x;
                    picks.index[i * 4 + j][t] = (at % 32) as i32;
                    *if at < 32 { &mut picks.low[i * 4 + j] } else { &mut picks.high[i * 4 + j] } |= 1 << t;
                }
            }
        }
        picks
    }

    /// The input transform of chunk k (slices 2k and 2k + 1 where there are two), every input channel.
    #[inline(always)]
    unsafe fn transform(&self, job: &Job, k: usize, v: *mut f32) -> Places {
        let [od, oh, ow] = job.g.output;
        let [_, h, w] = job.g.input;
        let slices = k * CHUNK / LANES..((k + 1) * CHUNK / LANES).min(od);
        let index: [__m512i; XI] = std::array::from_fn(|p| _mm512_loadu_si512(self.index[p].as_ptr().cast()));
        for (ci, channel) in job.channels.iter().enumerate() {
            for (half, z) in slices.clone().enumerate() {
                let plane = channel.as_ptr().add(z * h * w);
                // The plane's h * w (up to 64) values in four vectors, zeros past them (never read).
                let r: [__m512; 4] = std::array::from_fn(|q| {
                    let n = (h * w).saturating_sub(q * LANES).min(LANES);
                    _mm512_maskz_loadu_ps(((1u32 << n) - 1) as u16, plane.wrapping_add(q * LANES))
                });
                let mut t = [[_mm512_setzero_ps(); 4]; 4];
                for (i, t) in t.iter_mut().enumerate() {
                    let mut d = [_mm512_setzero_ps(); 4];
                    for (j, d) in d.iter_mut().enumerate() {
                        let p = i * 4 + j;
                        let low = _mm512_maskz_permutex2var_ps(self.low[p], r[0], index[p], r[1]);
                        *d = _mm512_mask_mov_ps(low, self.high[p], _mm512_permutex2var_ps(r[2], index[p], r[3]));
                    }
                    *t = bt(d[0], d[1], d[2], d[3]);
                }
                store_transformed(t, v.add(ci * V_CHANNEL + half * LANES));
            }
        }
        Places::Planes { slices, tiles: self.tiles, plane: [oh, ow] }
    }
}

/// The 16 values of a row of `w` from column x (may be -1); lanes outside 0..w are zero and not read.
#[inline(always)]
unsafe fn load(p: *const f32, x: isize, w: usize) -> __m512 {
    let lo = (-x).clamp(0, 16) as u32;
    let hi = (w as isize - x).clamp(0, 16) as u32;
    let mask = (((1u32 << hi) - 1) & !((1u32 << lo) - 1)) as u16;
    _mm512_maskz_loadu_ps(mask, p.wrapping_offset(x))
}

/// B^T d of one column (or row) of a 4 x 4 patch.
#[inline(always)]
unsafe fn bt(d0: __m512, d1: __m512, d2: __m512, d3: __m512) -> [__m512; 4] {
    [_mm512_sub_ps(d0, d2), _mm512_add_ps(d1, d2), _mm512_sub_ps(d2, d1), _mm512_sub_ps(d1, d3)]
}

/// A^T m of one column (or row) of a 4 x 4 product.
#[inline(always)]
unsafe fn at_(m0: __m512, m1: __m512, m2: __m512, m3: __m512) -> [__m512; 2] {
    [_mm512_add_ps(_mm512_add_ps(m0, m1), m2), _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3)]
}

/// The first `n` (up to 16) lanes of `v` at `p`.
#[inline(always)]
unsafe fn store(p: *mut f32, v: __m512, n: usize) {
    if n >= LANES {
        _mm512_storeu_ps(p, v);
    } else {
        _mm512_mask_storeu_ps(p, (1u16 << n) - 1, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::direct::tests::{alone, case, max_abs_diff, on_two_threads, SkipCase};
    use crate::backend::cpu::volume::im2col_conv3d;

    type Conv = fn(Input, &[f32], Option<&[f32]>, &Conv3d, Epilogue) -> Vec<f32>;

    #[test]
    fn winograd_matches_the_im2col_path() {
        if direct::capability() != Some(direct::Capability::Avx512) {
            println!("SKIP: this CPU has no AVX-512F; the Winograd kernel never runs here");
            return;
        }
        // Odd rows and columns (a last tile row and tile half outside), rows of 32, 33 and 70 outputs
        // (partial groups of tiles, vectors whose two groups come from one tile row or two), rows of 16
        // and 18 (two and four tile rows per chunk, chunks across slices), cout not a multiple of 8, two
        // images, two and three slices of a 1x3x3 kernel; small planes (8 x 8, odd 7 x 5 and 5 x 6: a last
        // tile row and column half outside, 9-16 tiles per vector), one slice per chunk or two, weights
        // past L2 (256 x 160); F(4x4, 3x3) on rows of 64 to 200 (one or two vectors of tiles, a last
        // vector or chunk partly outside, 13 and 9 rows: a last tile row partly outside, two slices).
        for (seed, &(n, cin, cout, input)) in [
            (1, 8, 8, [1, 32, 32]),
            (1, 8, 11, [3, 5, 16]),
            (2, 16, 8, [1, 16, 18]),
            (2, 16, 5, [1, 7, 33]),
            (1, 19, 16, [1, 9, 70]),
            (2, 32, 12, [2, 6, 64]),
            (1, 64, 19, [1, 5, 130]),
            (2, 16, 16, [1, 13, 200]),
            (1, 8, 9, [2, 4, 67]),
            (2, 64, 19, [3, 8, 8]),
            (1, 16, 8, [1, 7, 5]),
            (2, 8, 11, [2, 5, 6]),
            (1, 128, 128, [1, 8, 8]),
            (1, 256, 160, [1, 6, 8]),
        ]
        .iter()
        .enumerate()
        {
            let (g, x, w, b) = case((n, cin, cout), input, [1, 3, 3], [0, 1, 1], 5 * seed as u64);
            assert!(applies(&g));
            let mut reference = vec![f32::NAN; n * cout * g.output.iter().product::<usize>()];
            im2col_conv3d(&x, &w, Some(&b), &g, &mut reference);
            // Up to 9 * 64 products of O(1) values summed in another order, the inputs transformed by
            // weighted sums of 4: F(2x2, 3x3) 3-8e-7 of the largest output; F(4x4, 3x3) (rows of 64 and
            // more, else F(2x2)) 2-5e-6.
            let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (name, conv, bound) in [("F(2x2, 3x3)", conv3d as Conv, 1e-6), ("F(4x4, 3x3)", conv3d_f4x4, 1e-5)] {
                let wino = conv(x[..].into(), &w, Some(&b), &g, Epilogue::None);
                assert_eq!(wino.len(), reference.len());
                let err = max_abs_diff(&wino, &reference) / scale;
                println!("case {seed}: {name} (F(4x4) applies: {}), max |diff| {err:.2e} of max", f4x4::applies(&g));
                assert!(err < bound, "case {seed}, {name}: max |diff| {err} of max");
            }
        }
        // A NaN in the input reaches the outputs it touches, as it does in the direct sums.
        let (g, mut x, w, b) = case((1, 8, 8), [1, 4, 32], [1, 3, 3], [0, 1, 1], 40);
        x[3 * 32 + 7] = f32::NAN;
        let y = conv3d(x[..].into(), &w, Some(&b), &g, Epilogue::None);
        assert!(y[3 * 32 + 7].is_nan() && !y[0].is_nan());
        let (g, mut x, w, b) = case((1, 8, 8), [1, 6, 64], [1, 3, 3], [0, 1, 1], 41);
        assert!(f4x4::applies(&g));
        x[3 * 64 + 37] = f32::NAN;
        let y = conv3d_f4x4(x[..].into(), &w, Some(&b), &g, Epilogue::None);
        assert!(y[3 * 64 + 37].is_nan() && !y[0].is_nan() && !y[5 * 64 + 63].is_nan());
    }

    #[test]
    fn bf16_winograd_stays_within_the_bf16_bound_of_the_im2col_path() {
        if !direct::bf16_available() {
            println!("SKIP: this CPU has no AVX512-BF16; the bf16 Winograd GEMMs never run here");
            return;
        }
        // Tile rows and small planes, an odd channel count (a last pair of one channel), a skip read in
        // place, each image alone the same bits.
        for (seed, &(n, cin, cout, input)) in
            [(2, 16, 16, [1, 32, 32]), (1, 19, 11, [2, 9, 40]), (2, 64, 19, [3, 8, 8]), (1, 128, 128, [1, 6, 7])]
                .iter()
                .enumerate()
        {
            let (g, x, w, b) = case((n, cin, cout), input, [1, 3, 3], [0, 1, 1], 9 * seed as u64);
            let mut reference = vec![f32::NAN; n * cout * g.output.iter().product::<usize>()];
            im2col_conv3d(&x, &w, Some(&b), &g, &mut reference);
            let bf16 = conv3d_bf16(x[..].into(), &w, Some(&b), &g, Epilogue::None);
            let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
            // Transformed inputs and weights rounded to 8 bits of mantissa: the selftest's bf16 bound.
            let err = max_abs_diff(&bf16, &reference) / scale;
            println!("case {seed}: bf16 Winograd vs im2col {err:.2e} of max");
            assert!(err < 2e-2, "case {seed}: {err} of max");
            assert_ne!(
                bf16,
                conv3d(x[..].into(), &w, Some(&b), &g, Epilogue::None),
                "case {seed}: bf16 must not be the f32 path"
            );
        }
        same_bits_in_place_and_alone(&SkipCase::new(4, (16, 9), (9, 40), 13), conv3d_bf16);
    }

    /// `conv` of `c` with its skip read in place equals it on the concatenated input, and on two threads
    /// a batch equals each image alone, bit for bit.
    fn same_bits_in_place_and_alone(c: &SkipCase, conv: Conv) {
        let (weight, bias) = (&c.weight, Some(&c.bias[..]));
        let whole = conv(c.joined[..].into(), weight, bias, &c.g, Epilogue::None);
        let (batch, each) = on_two_threads(|| {
            (
                conv(c.input(), weight, bias, &c.g, Epilogue::None),
                alone(c, |x, g| conv(x, weight, bias, g, Epilogue::None)),
            )
        });
        assert_eq!(batch, whole, "a skip read in place: bit for bit");
        assert_eq!(batch, each, "a batch and each image alone: bit for bit");
    }

    #[test]
    fn winograd_reads_a_skip_in_place_and_gives_each_image_alone_the_same_bits() {
        if direct::capability() != Some(direct::Capability::Avx512) {
            println!("SKIP: this CPU has no AVX-512F; the Winograd kernel never runs here");
            return;
        }
        // Tile rows, small planes, and F(4x4, 3x3)'s rows.
        for c in [
            SkipCase::new(4, (16, 8), (9, 40), 11),
            SkipCase::new(5, (8, 16), (8, 7), 9),
            SkipCase::new(3, (8, 8), (6, 70), 12),
        ] {
            assert!(applies(&c.g));
            for conv in [conv3d as Conv, conv3d_f4x4] {
                same_bits_in_place_and_alone(&c, conv);
            }
        }
    }
}
