//! Direct stride-1 convolution (2-D as one slice, and 3-D) with AVX-512 or AVX2 + FMA, where im2col +
//! GEMM is bound by the column copies and the gemm crate's AVX2 micro-kernel (`cargo bench --bench unet`,
//! 2-core Xeon: 3-D 32->32 @48 and 64->64 @24 1.6x and 2.2x the im2col path, the bundled 2-D U-Net's
//! forward 1.4x): a block of output channels x a few registers of voxels of one output row stay in
//! registers (AVX-512: 8 x 2 x 16 lanes; AVX2: 4 x 3 x 8 lanes) while every input channel and tap streams
//! through them, from an input zero-padded once (so no tap needs a bounds check). The instruction set is
//! chosen at run time; `XAICLIP_CPU_CAPABILITY=avx2|default` (as PyTorch's `ATEN_CPU_CAPABILITY`) caps it,
//! `default` meaning the im2col path. `volume::im2col_conv3d` is the reference both are tested against.
//!
//! With `--precision bf16` on a CPU with AVX512-BF16 the same kernel runs on bfloat16 operands with f32
//! accumulation (`vdpbf16ps`: each lane adds the products of two input channels), inputs and weights
//! rounded to bf16 once, two channels interleaved per 32-bit element: half the instructions and bytes.

use super::elementwise::Epilogue;
use crate::backend::volume::Conv3d;
use rayon::prelude::*;
use std::arch::x86_64::*;

/// The vector instructions a kernel is compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Capability {
    Avx512,
    Avx2,
}

/// The best capability of this CPU, capped by `XAICLIP_CPU_CAPABILITY`; None: the im2col path.
pub(super) fn capability() -> Option<Capability> {
    static CHOSEN: std::sync::OnceLock<Option<Capability>> = std::sync::OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let cap = std::env::var("XAICLIP_CPU_CAPABILITY").unwrap_or_default().to_ascii_lowercase();
        let avx512 = std::arch::is_x86_feature_detected!("avx512f") && !matches!(cap.as_str(), "avx2" | "default");
        let avx2 = std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
        if avx512 {
            Some(Capability::Avx512)
        } else if avx2 && cap != "default" {
            Some(Capability::Avx2)
        } else {
            None
        }
    })
}

/// Whether the direct kernel applies: stride 1 on a CPU with AVX2 + FMA or AVX-512F, and not a wide
/// layer on short rows (256->256 on 16² planes wastes half of each 32-voxel run; GEMM keeps its peak).
pub(super) fn applies(g: &Conv3d) -> bool {
    g.stride == [1; 3] && (g.cout <= 64 || g.output[2] >= 32) && capability().is_some()
}

/// Whether the bf16 kernel can run: AVX512-BF16 (and AVX-512F), not capped by `XAICLIP_CPU_CAPABILITY`.
pub(super) fn bf16_available() -> bool {
    capability() == Some(Capability::Avx512) && std::arch::is_x86_feature_detected!("avx512bf16")
}

/// One stored input or weight value: an f32, or two input channels' values as bf16.
pub(super) trait Element: Copy + Send + Sync {
    /// Input channels per element.
    const GROUP: usize;
    const ZERO: Self;
    /// `dst[i]` from index i of the group's channel rows (fewer rows past the last channel), in one
    /// pass the compiler vectorises.
    fn gather(dst: &mut [std::mem::MaybeUninit<Self>], rows: &[&[f32]]);
    /// f32 values as elements where their layouts agree (f32 itself); None where they must be converted.
    fn borrow(x: &[f32]) -> Option<&[Self]>;
}

impl Element for f32 {
    const GROUP: usize = 1;
    const ZERO: Self = 0.0;
    #[inline(always)]
    fn gather(dst: &mut [std::mem::MaybeUninit<Self>], rows: &[&[f32]]) {
        dst.iter_mut().zip(rows[0]).for_each(|(o, &v)| *o = std::mem::MaybeUninit::new(v));
    }
    fn borrow(x: &[f32]) -> Option<&[Self]> {
        Some(x)
    }
}

/// Channels 2c (low half) and 2c + 1 (high half) of one voxel, rounded to bf16 (to nearest, ties even).
#[derive(Clone, Copy)]
pub(super) struct Bf16Pair(pub(super) u32);

/// The bf16 bits of `v` rounded to nearest, ties to even, in integer arithmetic (vectorises; finite
/// values and infinities exact, as `half::bf16::from_f32`).
#[inline(always)]
pub(super) fn bf16_bits(v: f32) -> u32 {
    let b = v.to_bits();
    b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16
}

impl Bf16Pair {
    /// `low` and `high` rounded to bf16 and packed (a lone channel: `high` 0, whose bits are 0).
    #[inline(always)]
    pub(super) fn new(low: f32, high: f32) -> Self {
        Bf16Pair(bf16_bits(low) | bf16_bits(high) << 16)
    }
}

impl Element for Bf16Pair {
    const GROUP: usize = 2;
    const ZERO: Self = Bf16Pair(0);
    #[inline(always)]
    fn gather(dst: &mut [std::mem::MaybeUninit<Self>], rows: &[&[f32]]) {
        match rows {
            [a, b] => dst
                .iter_mut()
                .zip(a.iter().zip(*b))
                .for_each(|(o, (&a, &b))| *o = std::mem::MaybeUninit::new(Bf16Pair::new(a, b))),
            [a] => dst.iter_mut().zip(*a).for_each(|(o, &a)| *o = std::mem::MaybeUninit::new(Bf16Pair::new(a, 0.0))),
            _ => unreachable!("a bf16 pair holds one or two channels"),
        }
    }
    fn borrow(_: &[f32]) -> Option<&[Self]> {
        None
    }
}

/// One instruction set's accumulators and how elements multiply into them.
trait Vector: Copy {
    type Elem: Element;
    /// A register of elements (voxels), or of one weight element broadcast.
    type Operand: Copy;
    const LANES: usize;
    unsafe fn zero() -> Self;
    unsafe fn load(p: *const Self::Elem) -> Self::Operand;
    unsafe fn splat(v: Self::Elem) -> Self::Operand;
    /// acc + x * w per lane (bf16: the sum of the lane's two products).
    unsafe fn mac(acc: Self, x: Self::Operand, w: Self::Operand) -> Self;
    /// Stores the first `n` lanes of `v + bias` at `p`.
    unsafe fn store(p: *mut f32, v: Self, bias: f32, n: usize);
}

impl Vector for __m512 {
    type Elem = f32;
    type Operand = __m512;
    const LANES: usize = 16;
    #[inline(always)]
    unsafe fn zero() -> Self {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        _mm512_set1_ps(v)
    }
    #[inline(always)]
    unsafe fn mac(acc: Self, x: Self, w: Self) -> Self {
        _mm512_fmadd_ps(x, w, acc)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self, bias: f32, n: usize) {
        _mm512_mask_storeu_ps(p, ((1u32 << n) - 1) as __mmask16, _mm512_add_ps(v, _mm512_set1_ps(bias)))
    }
}

impl Vector for __m256 {
    type Elem = f32;
    type Operand = __m256;
    const LANES: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> Self {
        _mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        _mm256_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        _mm256_set1_ps(v)
    }
    #[inline(always)]
    unsafe fn mac(acc: Self, x: Self, w: Self) -> Self {
        _mm256_fmadd_ps(x, w, acc)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self, bias: f32, n: usize) {
        let v = _mm256_add_ps(v, _mm256_set1_ps(bias));
        if n == 8 {
            _mm256_storeu_ps(p, v);
        } else {
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), v);
            std::ptr::copy_nonoverlapping(lanes.as_ptr(), p, n);
        }
    }
}

/// f32 accumulators fed by bf16 pairs.
#[derive(Clone, Copy)]
struct Bf16Acc(__m512);

impl Vector for Bf16Acc {
    type Elem = Bf16Pair;
    type Operand = __m512bh;
    const LANES: usize = 16;
    #[inline(always)]
    unsafe fn zero() -> Self {
        Bf16Acc(_mm512_setzero_ps())
    }
    #[inline(always)]
    unsafe fn load(p: *const Bf16Pair) -> __m512bh {
        std::mem::transmute(_mm512_loadu_si512(p.cast()))
    }
    #[inline(always)]
    unsafe fn splat(v: Bf16Pair) -> __m512bh {
        std::mem::transmute(_mm512_set1_epi32(v.0 as i32))
    }
    #[inline(always)]
    unsafe fn mac(acc: Self, x: __m512bh, w: __m512bh) -> Self {
        Bf16Acc(_mm512_dpbf16_ps(acc.0, x, w))
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self, bias: f32, n: usize) {
        <__m512 as Vector>::store(p, v.0, bias, n)
    }
}

/// Input channels of `g` in elements of `E`.
fn groups<E: Element>(g: &Conv3d) -> usize {
    g.cin.div_ceil(E::GROUP)
}

/// `row(ci)` for each input channel of element group `gi` (`E::GROUP` of them, fewer past the last),
/// as the rows `E::gather` reads; no allocation, as this runs for every padded input row.
fn group_rows<'a, E: Element>(g: &Conv3d, gi: usize, row: impl Fn(usize) -> &'a [f32]) -> ([&'a [f32]; 2], usize) {
    let mut rows: [&[f32]; 2] = [&[]; 2];
    let channels = gi * E::GROUP..((gi + 1) * E::GROUP).min(g.cin);
    let n = channels.len();
    for (slot, ci) in rows.iter_mut().zip(channels) {
        *slot = row(ci);
    }
    (rows, n)
}

/// The weights as [block][channel group][kz][ky][kx][block output channels], zero beyond `cout`.
fn pack<E: Element>(weight: &[f32], g: &Conv3d, block: usize) -> Vec<E> {
    let taps: usize = g.kernel.iter().product();
    let groups = groups::<E>(g);
    let mut packed = vec![E::ZERO; g.cout.div_ceil(block) * groups * taps * block];
    let mut taps_of = vec![std::mem::MaybeUninit::new(E::ZERO); taps];
    for co in 0..g.cout {
        for gi in 0..groups {
            let (rows, n) = group_rows::<E>(g, gi, |ci| &weight[(co * g.cin + ci) * taps..][..taps]);
            E::gather(&mut taps_of, &rows[..n]);
            for (t, v) in taps_of.iter().enumerate() {
                // SAFETY: gather wrote every tap.
                packed[((co / block) * groups * taps + gi * taps + t) * block + co % block] =
                    unsafe { v.assume_init() };
            }
        }
    }
    packed
}

/// One image's input channels as `E`, zero-padded by `pad` on every side, rows widened so that a run of
/// `chunk` voxels at any tap stays inside its row: (groups, D + 2pd, H + 2ph, row) and the row length.
/// The channels are `x`'s then `skip`'s (each channels x D x H x W): a concatenation read in place.
/// `groups` may exceed the channels' groups (the AMX tiles read whole blocks of them): those are zero.
pub(super) fn padded<E: Element>(x: &[f32], skip: &[f32], g: &Conv3d, chunk: usize, groups: usize) -> (Vec<E>, usize) {
    let ([d, h, w], [pd, ph, pw]) = (g.input, g.pad);
    let (dp, hp) = (d + 2 * pd, h + 2 * ph);
    let row = g.output[2].div_ceil(chunk) * chunk + g.kernel[2] - 1;
    let len = groups * dp * hp * row;
    let zero = std::mem::MaybeUninit::new(E::ZERO);
    let image = Input { x, skip };
    let line = |ci: usize, z: usize, y: usize| image.line(g, ci, z, y);
    let mut out = Vec::with_capacity(len);
    // Every value is written once, one task per padded (channel group, z) plane (no zeroing pass first:
    // it cost as much as the copy).
    out.spare_capacity_mut()[..len].par_chunks_mut(hp * row).enumerate().for_each(|(p, plane)| {
        let (gi, zp) = (p / dp, p % dp);
        for (yp, dst) in plane.chunks_exact_mut(row).enumerate() {
            let inside = gi * E::GROUP < g.cin;
            let source = zp.checked_sub(pd).filter(|&z| z < d && inside).zip(yp.checked_sub(ph).filter(|&y| y < h));
            match source {
                Some((z, y)) => {
                    let (rows, n) = group_rows::<E>(g, gi, |ci| line(ci, z, y));
                    dst[..pw].fill(zero);
                    E::gather(&mut dst[pw..pw + w], &rows[..n]);
                    dst[pw + w..].fill(zero);
                }
                None => dst.fill(zero),
            }
        }
    });
    // SAFETY: the planes cover the first `len` values and each was written above.
    unsafe { out.set_len(len) };
    (out, row)
}

/// The input of a direct convolution: N images of `x`'s channels followed by `skip`'s (a U-Net decoder's
/// concatenation, read in place instead of copied first); `g.cin` counts both.
#[derive(Clone, Copy)]
pub(super) struct Input<'a> {
    pub x: &'a [f32],
    pub skip: &'a [f32],
}

impl<'a> Input<'a> {
    /// Row (z, y) of channel `ci` of one image of `g`'s input: its own channels, then the skip's.
    pub(super) fn line(&self, g: &Conv3d, ci: usize, z: usize, y: usize) -> &'a [f32] {
        let [_, h, w] = g.input;
        &self.channel(g, ci)[(z * h + y) * w..][..w]
    }

    /// Channel `ci` (d x h x w values) of one image of `g`'s input: its own channels, then the skip's.
    pub(super) fn channel(&self, g: &Conv3d, ci: usize) -> &'a [f32] {
        let len = g.input.iter().product::<usize>();
        let (source, c) = match ci.checked_sub(self.x.len() / len) {
            None => (self.x, ci),
            Some(cs) => (self.skip, cs),
        };
        &source[c * len..][..len]
    }
}

impl<'a> From<&'a [f32]> for Input<'a> {
    fn from(x: &'a [f32]) -> Self {
        Self { x, skip: &[] }
    }
}

/// The convolution of `x` (N images): (N, cout, od, oh, ow), bias added, with the CPU's capability
/// (`applies` must hold).
pub(super) fn conv3d(x: Input, weight: &[f32], bias: Option<&[f32]>, g: &Conv3d, post: Epilogue) -> Vec<f32> {
    conv3d_with(capability().expect("direct::applies was checked"), x, weight, bias, g, post)
}

/// The f32 convolution with `cap`'s kernel (the tests run each capability the CPU has).
fn conv3d_with(
    cap: Capability,
    x: Input,
    weight: &[f32],
    bias: Option<&[f32]>,
    g: &Conv3d,
    post: Epilogue,
) -> Vec<f32> {
    match cap {
        Capability::Avx512 => convolve::<__m512, 8, 2>(x, weight, bias, g, post, row_avx512),
        Capability::Avx2 => convolve::<__m256, 4, 3>(x, weight, bias, g, post, row_avx2),
    }
}

/// The same with bf16 operands and f32 accumulation (`applies` and `bf16_available` must hold).
pub(super) fn conv3d_bf16(x: Input, weight: &[f32], bias: Option<&[f32]>, g: &Conv3d, post: Epilogue) -> Vec<f32> {
    assert!(bf16_available(), "direct::bf16_available was checked");
    convolve::<Bf16Acc, 8, 2>(x, weight, bias, g, post, row_bf16)
}

/// One output row of every channel: `output_row::<V, BLOCK, CHUNKS>` compiled for its instructions.
type RowKernel<E> = unsafe fn(&Row<E>, usize, *mut f32);

/// The convolution with the kernel of `V` in tiles of BLOCK channels x CHUNKS vectors of voxels
/// (`kernel` must be `output_row::<V, BLOCK, CHUNKS>`).
fn convolve<V: Vector, const BLOCK: usize, const CHUNKS: usize>(
    x: Input,
    weight: &[f32],
    bias: Option<&[f32]>,
    g: &Conv3d,
    post: Epilogue,
    kernel: RowKernel<V::Elem>,
) -> Vec<f32> {
    let (block, chunk) = (BLOCK, CHUNKS * V::LANES);
    let packed = pack::<V::Elem>(weight, g, block);
    let [od, oh, ow] = g.output;
    // A 1x1 convolution over rows of whole runs reads the image as it is: the padded copy would equal it
    // (the bundled U-Net's 1x1 head at 256², batch 16, copied 64 MiB for nothing: 15 -> 10 ms).
    let in_place = g.pad == [0; 3] && g.kernel == [1; 3] && ow % chunk == 0 && x.skip.is_empty();
    let image = |one: Input, rows_in_parallel, out: super::SharedMut| {
        let copy;
        let (input, row) = match V::Elem::borrow(one.x).filter(|_| in_place) {
            Some(image) => (image, ow),
            None => {
                copy = padded::<V::Elem>(one.x, one.skip, g, chunk, groups::<V::Elem>(g));
                (&copy.0[..], copy.1)
            }
        };
        let job = Row { input, row, packed: &packed, groups: groups::<V::Elem>(g), bias, g };
        // SAFETY: the CPU has the kernel's instructions (the callers checked); the call writes row r of
        // each output channel of this image only, inside its output.
        let one_row = |r| unsafe { kernel(&job, r, out.ptr()) };
        // A task is one output row (z, y) of every channel, or the whole image.
        if rows_in_parallel {
            (0..od * oh).into_par_iter().for_each(one_row);
        } else {
            (0..od * oh).for_each(one_row);
        }
    };
    // SAFETY: the rows 0..od * oh of every output channel, all of the image's output, are stored above.
    unsafe { each_image(x, g, post, image) }
}

/// The (N, cout, od, oh, ow) output of a convolution of `x`: `image(one, in_parallel, out)` runs for each
/// image as [`for_each_image`] schedules it, with that image's own and skip channels and its output
/// (cout x od x oh x ow values, not zeroed: each is stored once), then `post` on that output in the
/// same task.
///
/// # Safety
/// Each call of `image` must store every value of its image's output, and nothing outside it.
pub(super) unsafe fn each_image(
    x: Input,
    g: &Conv3d,
    post: Epilogue,
    image: impl Fn(Input, bool, super::SharedMut) + Sync,
) -> Vec<f32> {
    let plane = g.output.iter().product::<usize>();
    let (x_len, skip_len) = (x.x.len() / g.n, x.skip.len() / g.n);
    assert_eq!(x_len + skip_len, g.cin * g.input.iter().product::<usize>(), "input and skip make cin channels");
    let len = g.n * g.cout * plane;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let out_base = super::SharedMut(out.spare_capacity_mut().as_mut_ptr().cast::<f32>());
    for_each_image(g.n, |img, in_parallel| {
        let one = Input { x: &x.x[img * x_len..][..x_len], skip: &x.skip[img * skip_len..][..skip_len] };
        // SAFETY: image img's output lies inside the buffer's capacity.
        let out = unsafe { out_base.ptr().add(img * g.cout * plane) };
        image(one, in_parallel, super::SharedMut(out));
        // SAFETY: `image` stored all of this image's output, which no other task touches.
        post.apply(unsafe { std::slice::from_raw_parts_mut(out, g.cout * plane) }, g.cout, plane, in_parallel);
    });
    // SAFETY: the caller's `image` stored every value of every image's output.
    unsafe { out.set_len(len) };
    out
}

/// Runs `image(img, rows_in_parallel)` for each of `n` images: one task per image with its rows in
/// order for as many images as split evenly over the threads (at least two each; all of a large
/// batch), then the rest image after image with the rows shared out. Per image and layer the shared
/// rows meet at a join, and the AMX tasks each load the tile configuration: bundled U-Net, batch 16
/// (`xaiclip profile`, interleaved runs), f32 128² 78 -> 64 ms, 256² 271-278 -> 250-253 ms, 512² 1044
/// -> 1020 ms; bf16 128² 49 -> 29 ms, 256² 167 -> 133 ms. An odd batch's last image alone (not every
/// image) has its rows shared: batch 13 at 128² 42-46 -> 36-39 ms (fastest and median of 8). Every row
/// is computed alike either way, so the results are the same bits.
pub(super) fn for_each_image(n: usize, image: impl Fn(usize, bool) + Sync) {
    let threads = rayon::current_num_threads();
    let whole = match n {
        n if n >= 8 * threads => n,
        n if n >= 2 * threads => n / threads * threads,
        _ => 0,
    };
    (0..whole).into_par_iter().for_each(|img| image(img, false));
    (whole..n).for_each(|img| image(img, true));
}

/// What every output row of one image reads.
struct Row<'a, E> {
    input: &'a [E],
    row: usize,
    packed: &'a [E],
    /// Input channels in elements (cin, or cin / 2 rounded up for bf16 pairs).
    groups: usize,
    bias: Option<&'a [f32]>,
    g: &'a Conv3d,
}

#[target_feature(enable = "avx512f")]
unsafe fn row_avx512(job: &Row<f32>, r: usize, out: *mut f32) {
    output_row::<__m512, 8, 2>(job, r, out)
}

#[target_feature(enable = "avx2,fma")]
unsafe fn row_avx2(job: &Row<f32>, r: usize, out: *mut f32) {
    output_row::<__m256, 4, 3>(job, r, out)
}

#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn row_bf16(job: &Row<Bf16Pair>, r: usize, out: *mut f32) {
    output_row::<Bf16Acc, 8, 2>(job, r, out)
}

/// Output row r = z * oh + y of every output channel: BLOCK channels x CHUNKS vectors of voxels at a
/// time, accumulated in registers over every input channel group and tap.
#[inline(always)]
unsafe fn output_row<V: Vector, const BLOCK: usize, const CHUNKS: usize>(job: &Row<V::Elem>, r: usize, out: *mut f32) {
    let g = job.g;
    let [kd, kh, kw] = g.kernel;
    let [od, oh, ow] = g.output;
    let (dp, hp) = (g.input[0] + 2 * g.pad[0], g.input[1] + 2 * g.pad[1]);
    let (z, y) = (r / oh, r % oh);
    let taps = kd * kh * kw;
    let span = CHUNKS * V::LANES;
    for block in 0..g.cout.div_ceil(BLOCK) {
        let weights = &job.packed[block * job.groups * taps * BLOCK..][..job.groups * taps * BLOCK];
        for x0 in (0..ow).step_by(span) {
            let mut acc = [[V::zero(); CHUNKS]; BLOCK];
            for ci in 0..job.groups {
                for kz in 0..kd {
                    for ky in 0..kh {
                        let line = job.input.as_ptr().add(((ci * dp + z + kz) * hp + y + ky) * job.row + x0);
                        let w = weights.as_ptr().add(((ci * kd + kz) * kh + ky) * kw * BLOCK);
                        for kx in 0..kw {
                            let v: [V::Operand; CHUNKS] = std::array::from_fn(|c| V::load(line.add(kx + c * V::LANES)));
                            for (j, acc) in acc.iter_mut().enumerate() {
                                let wv = V::splat(*w.add(kx * BLOCK + j));
                                for (a, &v) in acc.iter_mut().zip(&v) {
                                    *a = V::mac(*a, v, wv);
                                }
                            }
                        }
                    }
                }
            }
            // Store the voxels of this span that exist, bias added.
            let n = (ow - x0).min(span);
            for (j, acc) in acc.iter().enumerate().take(g.cout - block * BLOCK) {
                let co = block * BLOCK + j;
                let bias = job.bias.map_or(0.0, |b| b[co]);
                let dst = out.add(co * od * oh * ow + r * ow + x0);
                for (c, &a) in acc.iter().enumerate() {
                    let lanes = n.saturating_sub(c * V::LANES).min(V::LANES);
                    if lanes > 0 {
                        V::store(dst.add(c * V::LANES), a, bias, lanes);
                    }
                }
            }
        }
    }
}

/// Random cases and comparisons the CPU kernels' tests share (the AMX and transposed kernels' too).
#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::backend::cpu::volume::im2col_conv3d;

    /// `n` values uniform in [-1, 1) from `seed`.
    pub(in crate::backend::cpu) fn random(n: usize, seed: u64) -> Vec<f32> {
        let rng = crate::rng::Philox::new(seed);
        (0..n as u64).map(|i| rng.uniform(i) * 2.0 - 1.0).collect()
    }

    /// A stride-1 convolution case: its geometry and random input, weight and bias (seeds `seed`,
    /// `seed + 1`, `seed + 2`).
    pub(in crate::backend::cpu) fn case(
        (n, cin, cout): (usize, usize, usize),
        input: [usize; 3],
        kernel: [usize; 3],
        pad: [usize; 3],
        seed: u64,
    ) -> (Conv3d, Vec<f32>, Vec<f32>, Vec<f32>) {
        let g = Conv3d::new(
            &[n, cin, input[0], input[1], input[2]],
            &[cout, cin, kernel[0], kernel[1], kernel[2]],
            [1; 3],
            pad,
        )
        .unwrap();
        let x = random(n * cin * input.iter().product::<usize>(), seed);
        let w = random(cout * cin * kernel.iter().product::<usize>(), seed + 1);
        (g, x, w, random(cout, seed + 2))
    }

    /// im2col + GEMM of the bf16-rounded input and weight (bias as is): a bf16 kernel's result up to
    /// the order of its f32 sums.
    pub(in crate::backend::cpu) fn rounded_reference(x: &[f32], w: &[f32], b: &[f32], g: &Conv3d) -> Vec<f32> {
        let round = |v: &[f32]| v.iter().map(|&a| half::bf16::from_f32(a).to_f32()).collect::<Vec<_>>();
        let mut rounded = vec![f32::NAN; g.n * g.cout * g.output.iter().product::<usize>()];
        im2col_conv3d(&round(x), &round(w), Some(b), g, &mut rounded);
        rounded
    }

    /// A 3x3 convolution of `n` images of `c1` own + `c2` skip channels, h x w: its geometry, the two
    /// inputs, their concatenation per image, weight and bias.
    pub(in crate::backend::cpu) struct SkipCase {
        pub g: Conv3d,
        pub x: Vec<f32>,
        pub skip: Vec<f32>,
        pub joined: Vec<f32>,
        pub weight: Vec<f32>,
        pub bias: Vec<f32>,
    }

    impl SkipCase {
        pub(in crate::backend::cpu) fn new(
            n: usize,
            (c1, c2): (usize, usize),
            (h, w): (usize, usize),
            cout: usize,
        ) -> Self {
            let g = Conv3d::new(&[n, c1 + c2, 1, h, w], &[cout, c1 + c2, 1, 3, 3], [1; 3], [0, 1, 1]).unwrap();
            let (x, skip) = (random(n * c1 * h * w, 1), random(n * c2 * h * w, 2));
            let (weight, bias) = (random(cout * (c1 + c2) * 9, 3), random(cout, 4));
            let joined = (0..n)
                .flat_map(|i| [&x[i * c1 * h * w..][..c1 * h * w], &skip[i * c2 * h * w..][..c2 * h * w]].concat())
                .collect();
            SkipCase { g, x, skip, joined, weight, bias }
        }

        pub(in crate::backend::cpu) fn input(&self) -> Input<'_> {
            Input { x: &self.x, skip: &self.skip }
        }
    }

    #[test]
    fn direct_convolution_matches_the_im2col_path() {
        let mut capabilities = Vec::new();
        if std::arch::is_x86_feature_detected!("avx512f") {
            capabilities.push(Capability::Avx512);
        } else {
            println!("SKIP: this CPU has no AVX-512F; that kernel never runs here");
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            capabilities.push(Capability::Avx2);
        } else {
            println!("SKIP: this CPU has no AVX2 + FMA; that kernel never runs here");
        }
        // Partial chunks (W 5, 33, 70), W below one register, Cout not a multiple of 8, anisotropic and
        // even kernels, padding 0-2, two images, a single slice (a 2-D convolution), and a 1x1 over rows
        // of whole runs (W 96: 3 x 32 and 4 x 24 voxels), read in place without the padded copy.
        for (seed, &(n, cin, cout, input, kernel, pad)) in [
            (1, 3, 5, [4, 6, 5], [3, 3, 3], [1, 1, 1]),
            (2, 8, 8, [6, 9, 33], [3, 3, 3], [1, 1, 1]),
            (1, 4, 19, [3, 7, 70], [1, 3, 3], [0, 1, 1]),
            (1, 2, 12, [5, 5, 8], [2, 2, 4], [0, 1, 2]),
            (1, 16, 3, [4, 4, 17], [1, 1, 1], [0, 0, 0]),
            (2, 5, 9, [1, 11, 40], [1, 5, 5], [0, 2, 2]),
            (2, 16, 14, [1, 5, 96], [1, 1, 1], [0, 0, 0]),
        ]
        .iter()
        .enumerate()
        {
            let (g, x, w, b) = case((n, cin, cout), input, kernel, pad, 3 * seed as u64);
            let len = n * cout * g.output.iter().product::<usize>();
            let mut reference = vec![f32::NAN; len];
            im2col_conv3d(&x, &w, Some(&b), &g, &mut reference);
            for &cap in &capabilities {
                let direct = conv3d_with(cap, x[..].into(), &w, Some(&b), &g, Epilogue::None);
                assert_eq!(direct.len(), len);
                // Sums of up to a few hundred O(1) products in another order: ~1e-6 absolute.
                let err = max_abs_diff(&direct, &reference);
                assert!(err < 1e-4, "case {seed}, {cap:?}: max |diff| {err}");
            }
            // bf16: the same convolution of the bf16-rounded inputs and weights, so only the order of
            // the f32 sums differs (odd cin leaves half of the last pair zero).
            if bf16_available() {
                let rounded = rounded_reference(&x, &w, &b, &g);
                let direct = conv3d_bf16(x[..].into(), &w, Some(&b), &g, Epilogue::None);
                assert_eq!(direct.len(), len);
                let err = max_abs_diff(&direct, &rounded);
                assert!(err < 1e-4, "case {seed}, bf16: max |diff| {err} against the rounded operands");
                // And against f32: bf16 keeps 8 bits of mantissa (relative 2^-9 per operand).
                let err = max_abs_diff(&direct, &reference);
                assert!(err < 0.05, "case {seed}, bf16 vs f32: max |diff| {err}");
            }
        }
        if !bf16_available() {
            println!("SKIP: this CPU has no AVX512-BF16; the bf16 kernel never runs here");
        }
    }

    #[test]
    fn a_skip_read_in_place_equals_the_concatenated_input() {
        // Two images of 3 + 5 channels (an odd split, and an odd total for the bf16 pairs), 9 x 13 pixels.
        let c = SkipCase::new(2, (3, 5), (9, 13), 6);
        let (g, weight, bias) = (&c.g, &c.weight, Some(&c.bias[..]));
        let Some(cap) = capability() else {
            println!("SKIP: this CPU has neither AVX2+FMA nor AVX-512F; the direct kernel never runs here");
            return;
        };
        let whole = conv3d_with(cap, c.joined[..].into(), weight, bias, g, Epilogue::None);
        let split = conv3d_with(cap, c.input(), weight, bias, g, Epilogue::None);
        assert_eq!(split, whole, "same values in the same order: bit for bit");
        if bf16_available() {
            let whole = conv3d_bf16(c.joined[..].into(), weight, bias, g, Epilogue::None);
            assert_eq!(conv3d_bf16(c.input(), weight, bias, g, Epilogue::None), whole);
        }
    }

    /// `f` on a pool of two threads (what CI has), so that a batch of four runs one task per image.
    pub(in crate::backend::cpu) fn on_two_threads<R: Send>(f: impl FnOnce() -> R + Send) -> R {
        rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap().install(f)
    }

    /// Each image of `c` convolved alone (image after image, its rows shared out), concatenated.
    pub(in crate::backend::cpu) fn alone(c: &SkipCase, conv: impl Fn(Input, &Conv3d) -> Vec<f32>) -> Vec<f32> {
        let (n, [_, h, w]) = (c.g.n, c.g.input);
        let (c1, c2) = (c.x.len() / (n * h * w), c.skip.len() / (n * h * w));
        let one = Conv3d { n: 1, ..c.g };
        (0..n)
            .flat_map(|i| {
                let input =
                    Input { x: &c.x[i * c1 * h * w..][..c1 * h * w], skip: &c.skip[i * c2 * h * w..][..c2 * h * w] };
                conv(input, &one)
            })
            .collect()
    }

    #[test]
    fn a_batch_of_small_images_gives_each_image_alone_the_same_bits() {
        let Some(cap) = capability() else {
            println!("SKIP: this CPU has neither AVX2+FMA nor AVX-512F; the direct kernel never runs here");
            return;
        };
        // Five images on two threads: one task for each of the first four, the last one's rows shared;
        // alone, each runs its rows in parallel.
        let c = SkipCase::new(5, (3, 5), (9, 13), 6);
        let (weight, bias) = (&c.weight, Some(&c.bias[..]));
        let (batch, each) = on_two_threads(|| {
            (
                conv3d_with(cap, c.input(), weight, bias, &c.g, Epilogue::None),
                alone(&c, |x, g| conv3d_with(cap, x, weight, bias, g, Epilogue::None)),
            )
        });
        assert_eq!(batch, each, "bit for bit");
        if bf16_available() {
            let (batch, each) = on_two_threads(|| {
                (
                    conv3d_bf16(c.input(), weight, bias, &c.g, Epilogue::None),
                    alone(&c, |x, g| conv3d_bf16(x, weight, bias, g, Epilogue::None)),
                )
            });
            assert_eq!(batch, each, "bf16: bit for bit");
        }
    }

    /// Largest |a - b|; a NaN on either side is infinite.
    pub(in crate::backend::cpu) fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).fold(0f32, |m, (a, b)| {
            let d = (a - b).abs();
            if d.is_nan() {
                f32::INFINITY
            } else {
                m.max(d)
            }
        })
    }
}
