//! CPU reference backend: rayon over independent work items, the `gemm` crate for every product.
//!
//! Convolutions are im2col + GEMM over tiles of output rows: a tile's column buffer stays in L2, each
//! rayon task owns one (image, tile) pair, and the GEMM inside a task runs single-threaded so the two
//! levels of parallelism do not fight.

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod direct;
mod elementwise;
mod head;
#[cfg(target_arch = "x86_64")]
mod transposed;
mod volume;
#[cfg(target_arch = "x86_64")]
mod winograd;

use super::perturb::{MaskBatch, ScoreKind};
use super::volume::batch_channels_plane;
use super::{perturb, Activation, Backend, PlaneNorm, Precision, Scene};
use crate::tensor::Tensor;
use anyhow::{bail, ensure, Result};
use elementwise::Epilogue;
use gemm::Parallelism;
use rayon::prelude::*;
use std::alloc::{GlobalAlloc, Layout, System};

/// The reference backend: rayon over images and tiles, the direct kernel or the `gemm` crate for the
/// convolutions. The constant `CpuBackend` computes in f32; `CpuBackend::bf16()` runs the stride-1 2-D
/// convolutions on bf16 operands with f32 accumulation (`--precision bf16` on a CPU with AVX512-BF16:
/// on AMX tiles those with 16+ input channels, the others in f32, where the CPU has AMX; else on
/// `vdpbf16ps`; 3-D convolutions stay f32, as on the GPU); `CpuBackend::tf32()` computes in f32 with
/// the 2-D 3x3 convolutions on rows of 64 outputs and more on Winograd F(4x4, 3x3), 36 products per 16
/// outputs instead of F(2x2, 3x3)'s 64, whose rounding (a few 1e-6 of a layer's largest output
/// against F(2x2)'s ~5e-7) stays far inside what tf32 promises on a GPU (`--precision tf32`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuBackend {
    precision: Precision,
}

/// The f32 CPU backend, the reference: a constant named as its type, so that `CpuBackend` reads as the
/// unit struct it was before the bf16 variant existed.
#[allow(non_upper_case_globals)]
pub const CpuBackend: CpuBackend = CpuBackend { precision: Precision::F32 };

impl Default for CpuBackend {
    fn default() -> Self {
        CpuBackend
    }
}

impl CpuBackend {
    /// The bf16 variant, where the CPU has AVX512-BF16 (`vdpbf16ps`); None elsewhere.
    pub fn bf16() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        if direct::bf16_available() {
            return Some(CpuBackend { precision: Precision::Bf16 });
        }
        None
    }

    /// The tf32 variant: f32 with Winograd F(4x4, 3x3) on wide planes (the same as f32 where AVX-512F
    /// is missing).
    pub fn tf32() -> Self {
        CpuBackend { precision: Precision::Tf32 }
    }

    /// The precision its convolutions run at.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Whether convolutions run on bf16 operands.
    pub fn is_bf16(&self) -> bool {
        self.precision == Precision::Bf16
    }
}

/// Target number of output pixels per conv tile (columns of the im2col buffer).
const TILE_COLUMNS: usize = 2048;

/// A raw pointer that rayon tasks may share because each writes a disjoint region.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: users write disjoint regions from different tasks and join before reading (see each use).
unsafe impl Send for SharedMut {}
// SAFETY: as for Send: no two tasks touch the same element.
unsafe impl Sync for SharedMut {}

impl SharedMut {
    // A method (not field access) so closures capture the Send+Sync wrapper, not the raw pointer.
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// dst (m x n, row stride dst_rs) = lhs (m x k, strides lhs_rs/lhs_cs) * rhs (k x n, strides rhs_rs/rhs_cs).
///
/// SAFETY: the pointers must cover the described matrices; dst must not alias the inputs.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: isize,
    dst_cs: isize,
    lhs: *const f32,
    lhs_rs: isize,
    lhs_cs: isize,
    rhs: *const f32,
    rhs_rs: isize,
    rhs_cs: isize,
    parallelism: Parallelism,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        dst_cs,
        dst_rs,
        false,
        lhs,
        lhs_cs,
        lhs_rs,
        rhs,
        rhs_cs,
        rhs_rs,
        0.0,
        1.0,
        false,
        false,
        false,
        parallelism,
    );
}

/// The parallelism of each GEMM when `tasks` of them run side by side: with fewer tasks than cores (one
/// small plane: the wide layers deep in a U-Net at batch 1) each GEMM splits its output blocks over the
/// cores instead of leaving them idle; the sums per output are the same either way.
fn gemm_parallelism(tasks: usize) -> Parallelism {
    if tasks < rayon::current_num_threads() {
        threads()
    } else {
        Parallelism::None
    }
}

fn threads() -> Parallelism {
    match rayon::current_num_threads() {
        1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// Public so that benches can measure the machine's SGEMM peak through the very code path the
/// backend uses: C (m x n) = A (m x k) * B (k x n), all row-major.
pub fn sgemm(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    // SAFETY: the assert above: all three slices cover their matrices, and c is borrowed mutably alone.
    unsafe {
        matmul(m, n, k, c.as_mut_ptr(), n as isize, 1, a.as_ptr(), k as isize, 1, b.as_ptr(), n as isize, 1, threads());
    }
}

fn vector_arg<'a>(t: Option<&'a Tensor>, len: usize, what: &str) -> Result<Option<&'a [f32]>> {
    match t {
        Some(t) if t.len() != len => bail!("{what} has {} values, expected {len}", t.len()),
        Some(t) => Ok(Some(t.data())),
        None => Ok(None),
    }
}

impl CpuBackend {
    /// A stride-1 convolution of `input` (`[n, cin, h, w]`, its own and skip channels) on the direct
    /// kernel, on the image as one slice, then `post` on each image's output; None where the kernel
    /// does not apply (im2col + GEMM then).
    #[cfg(target_arch = "x86_64")]
    fn direct2d(
        &self,
        input: direct::Input,
        [n, cin, h, w]: [usize; 4],
        weight: &Tensor,
        bias: Option<&[f32]>,
        pad: usize,
        post: Epilogue,
    ) -> Result<Option<Tensor>> {
        let (cout, wcin, kh, kw) = weight.nchw()?;
        let g = super::volume::Conv3d::new(&[n, cin, 1, h, w], &[cout, wcin, 1, kh, kw], [1; 3], [0, pad, pad])?;
        let bf16 = self.is_bf16();
        let conv = if bf16 && amx::applies(&g) {
            amx::conv3d
        } else if winograd::applies(&g) && !(bf16 && amx::available()) {
            // bf16 without AMX: the Winograd GEMMs on `vdpbf16ps` (with AMX, what the tiles leave stays f32).
            match self.precision {
                Precision::Bf16 => winograd::conv3d_bf16,
                Precision::Tf32 => winograd::conv3d_f4x4,
                Precision::F32 => winograd::conv3d,
            }
        } else if !direct::applies(&g) {
            return Ok(None);
        } else if bf16 && !amx::available() {
            direct::conv3d_bf16
        } else {
            // With AMX, the convolutions the tiles leave (fewer than 16 input channels) run faster in f32
            // than on `vdpbf16ps` (1->16 @256, batch 16: 4.2 vs 7.0 ms), and exactly.
            direct::conv3d
        };
        let [_, _, _, oh, ow] = g.output_shape();
        Ok(Some(Tensor::new(&[n, cout, oh, ow], conv(input, weight.data(), bias, &g, post))?))
    }

    /// A stride-1 convolution over [x, extra] with padding `pad`, then `post`: the direct kernels read the
    /// skip in place and apply `post` to each image while it is in cache; elsewhere the separate calls.
    fn conv2d_then(
        &self,
        x: &Tensor,
        extra: Option<&Tensor>,
        weight: &Tensor,
        bias: Option<&Tensor>,
        pad: usize,
        post: Epilogue,
    ) -> Result<Tensor> {
        #[cfg(target_arch = "x86_64")]
        {
            let (n, c, h, w) = x.nchw()?;
            let (ce, skip) = match extra {
                Some(e) => {
                    let (ne, ce, he, we) = e.nchw()?;
                    ensure!(
                        (ne, he, we) == (n, h, w),
                        "conv2d_fused: skip {:?} does not match input {:?}",
                        e.shape(),
                        x.shape()
                    );
                    (ce, e.data())
                }
                None => (0, &[][..]),
            };
            let bias = vector_arg(bias, weight.shape()[0], "conv2d bias")?;
            let input = direct::Input { x: x.data(), skip };
            if let Some(y) = self.direct2d(input, [n, c + ce, h, w], weight, bias, pad, post)? {
                return Ok(y);
            }
        }
        let mut y = super::conv2d_unfused(self, x, extra, weight, bias, pad, Activation::Identity)?;
        let (_, cout, len) = batch_channels_plane(y.shape(), "conv2d")?;
        post.apply(y.data_mut(), cout, len, true);
        Ok(y)
    }
}

/// This CPU in words, for benchmark records (absolute times mean little without it): its model name,
/// the vector extensions that matter here, the kernels xaiclip chose and its threads.
pub fn describe_cpu() -> String {
    // /proc/cpuinfo names the model and the AMX flags (whose detection macro is not stable in Rust).
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines().find(|l| l.starts_with(name)).and_then(|l| l.split(':').nth(1)).map(|v| v.trim().to_string())
    };
    let model = field("model name").unwrap_or_else(|| "unknown CPU".into());
    let flags = field("flags").unwrap_or_default();
    let has = |flag: &str| flags.split_whitespace().any(|f| f == flag);
    let isa: Vec<&str> =
        [("avx2", "AVX2"), ("avx512f", "AVX-512F"), ("avx512_bf16", "AVX512-BF16"), ("amx_bf16", "AMX-BF16")]
            .into_iter()
            .filter(|(flag, _)| has(flag))
            .map(|(_, name)| name)
            .collect();
    let kernels = match direct::capability() {
        Some(direct::Capability::Avx512) if amx::available() => "Winograd and direct AVX-512 (bf16: AMX tiles)",
        Some(direct::Capability::Avx512) if direct::bf16_available() => {
            "Winograd and direct AVX-512 (bf16: AVX512-BF16)"
        }
        Some(direct::Capability::Avx512) => "Winograd and direct AVX-512",
        Some(direct::Capability::Avx2) => "direct AVX2",
        None => "im2col GEMM",
    };
    format!(
        "{model}; {}; xaiclip's convolutions: {kernels}; {} threads",
        if isa.is_empty() { "no AVX2 listed".to_string() } else { isa.join(", ") },
        rayon::current_num_threads()
    )
}

/// Bytes the process can still allocate: the least of MemAvailable, the cgroup's memory limit less its
/// usage (v2 or v1), and the address-space rlimit less the address space already mapped (VmSize: the
/// binary, the models, the threads' stacks and allocator arenas, 0.5-0.7 GB for the CLI with CLIP,
/// which the rlimit counts; without it a 1.2 GB `ulimit -v` batch ran out of address space, now and
/// then, at its last layer). Unknown parts are ignored; 4 GiB when nothing can be read.
pub fn available_memory() -> usize {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let number = |t: Option<String>| t.and_then(|t| t.trim().parse::<u64>().ok());
    // A "Name:   123 kB" line of a /proc file, in bytes.
    let kb_field = |path: &str, name: &str| {
        let text = read(path)?;
        let kb = text.lines().find_map(|l| l.strip_prefix(name))?;
        kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok().map(|kb| kb * 1024)
    };
    let mut limits: Vec<u64> = Vec::new();
    limits.extend(kb_field("/proc/meminfo", "MemAvailable:"));
    for (max, used) in [
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ] {
        if let Some(limit) = number(read(max)) {
            limits.push(limit.saturating_sub(number(read(used)).unwrap_or(0)));
        }
    }
    #[cfg(unix)]
    {
        let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes the struct it is given and nothing else.
        if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut r) } == 0 && r.rlim_cur != libc::RLIM_INFINITY {
            let mapped = kb_field("/proc/self/status", "VmSize:").unwrap_or(0);
            limits.push(r.rlim_cur.saturating_sub(mapped));
        }
    }
    limits.into_iter().min().map_or(4 << 30, |b| b.min(usize::MAX as u64) as usize)
}

/// Keeps freed memory in the process for reuse. Every U-Net layer allocates and frees activations of
/// tens of MiB; glibc serves blocks that large with mmap and unmaps them on free, so each layer paid
/// page faults and kernel zeroing on fresh pages. Process-wide, so the binary (not the library) calls
/// it at start; benches call it to measure what the binary does.
pub fn reuse_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// The allocator for programs that run the CPU kernels (`#[global_allocator] static ALLOC: CacheAligned
/// = CacheAligned;`, as the CLI, the benches and the Python module do; process-wide, so the library
/// cannot choose it): the system allocator with blocks of 1 KiB and more aligned to a 64-byte cache line,
/// and on Linux the whole 2 MiB pages inside blocks of 4 MiB and more (activations) marked for
/// transparent huge pages. glibc aligns to 16 bytes, so every 64-byte vector load and store of an
/// activation row or a kernel's scratch straddled two lines (AMD Zen 4, forward at batch 16, fastest of
/// interleaved runs: 128² 51.5 -> 47.4 ms, 256² 209 -> 205 ms); a convolution reads 16 and more planes
/// at once, each on its own 4 KiB pages (huge pages, where the kernel's setting is `madvise` or
/// `always`: 128² 42.6 -> 40.8 ms, 256² 180 -> 170 ms). The blocks are not aligned to 2 MiB: glibc's
/// memalign asks its free lists for the size plus 2 MiB, so a freed activation never served the next
/// one of its size and the heap grew by ~18 MiB per large block in every run (11 heap extensions in runs
/// 2-5 of `bench --methods occlusion --repeat 5` at 128², none now), each new page a fault, which some
/// VMs serve slowly (Zen 4 VM, 6 runs of `bench --methods occlusion,rise --repeat 5`: huge-page faults
/// median ~155 -> ~110, peak RSS ~360 -> ~300 MB, occlusion's median 0.152 -> 0.140 s; the forward the
/// same).
pub struct CacheAligned;

/// Blocks this large get huge pages.
#[cfg(target_os = "linux")]
const HUGE_BLOCK: usize = 4 << 20;
/// A transparent huge page.
#[cfg(target_os = "linux")]
const HUGE_PAGE: usize = 2 << 20;

impl CacheAligned {
    fn widened(layout: Layout) -> Layout {
        if layout.size() >= 1024 {
            layout.align_to(64).unwrap_or(layout)
        } else {
            layout
        }
    }
}

// SAFETY: each block is allocated and freed by the system allocator with the same widened layout (a
// function of the caller's layout), whose size and alignment are at least what the caller asked for;
// madvise only changes how the kernel backs the block's pages.
unsafe impl GlobalAlloc for CacheAligned {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let widened = Self::widened(layout);
        let ptr = System.alloc(widened);
        #[cfg(target_os = "linux")]
        if !ptr.is_null() && widened.size() >= HUGE_BLOCK {
            // The whole huge pages inside the block, before the first touch (pages already faulted in
            // stay small). A hint; failure changes nothing.
            let (start, end) =
                ((ptr as usize).next_multiple_of(HUGE_PAGE), (ptr as usize + widened.size()) / HUGE_PAGE * HUGE_PAGE);
            if end > start {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // Zeroed after the hint (the system's zeroing would fault the pages in first).
        let ptr = self.alloc(layout);
        if !ptr.is_null() {
            std::ptr::write_bytes(ptr, 0, layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, Self::widened(layout))
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = Layout::from_size_align_unchecked(new_size, layout.align());
        if Self::widened(layout) == layout && Self::widened(new) == new {
            // Small blocks stay small: glibc may grow them in place.
            return System.realloc(ptr, layout, new_size);
        }
        let moved = self.alloc(new);
        if !moved.is_null() {
            std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
            self.dealloc(ptr, layout);
        }
        moved
    }
}

/// One conv tile's GEMM, `dst[co * plane + j] = bias[co] + sum_k weight[co, k] rhs[k, j]` for the
/// (cout, kdim, ncols) product, rhs row stride `rhs.1`.
///
/// Thin layers (Cout <= 64, K >= 32) go through a channel-fastest tile, transposed into the planes while
/// in cache: gemm then blocks Cout (a multiple of its 16-row micro-kernel) against the long pixel axis,
/// instead of pixels against Cout in steps of 6 with a slow remainder (32->32 @256: 81 -> 124 GFLOP/s).
/// Wide layers and K < 32 (the 1-channel input conv) write the planes directly.
///
/// SAFETY: rhs spans kdim rows of ncols columns; dst row co (co < cout) spans ncols values at co * plane,
/// written by this call only.
unsafe fn gemm_into_planes(
    (cout, kdim, ncols): (usize, usize, usize),
    weight: &[f32],
    (rhs, rhs_rs): (*const f32, isize),
    (dst, plane): (*mut f32, usize),
    bias: Option<&[f32]>,
    tile_out: &mut Vec<f32>,
    parallelism: Parallelism,
) {
    let row = |co: usize| unsafe { std::slice::from_raw_parts_mut(dst.add(co * plane), ncols) };
    if cout <= 64 && kdim >= 32 {
        tile_out.resize(cout * ncols, 0.0);
        unsafe {
            matmul(
                cout,
                ncols,
                kdim,
                tile_out.as_mut_ptr(),
                1,
                cout as isize,
                weight.as_ptr(),
                kdim as isize,
                1,
                rhs,
                rhs_rs,
                1,
                parallelism,
            )
        };
        for co in 0..cout {
            let bv = bias.map_or(0.0, |b| b[co]);
            for (j, v) in row(co).iter_mut().enumerate() {
                *v = tile_out[j * cout + co] + bv;
            }
        }
    } else {
        unsafe {
            matmul(
                cout,
                ncols,
                kdim,
                dst,
                plane as isize,
                1,
                weight.as_ptr(),
                kdim as isize,
                1,
                rhs,
                rhs_rs,
                1,
                parallelism,
            )
        };
        if let Some(b) = bias {
            for (co, &bv) in b.iter().enumerate() {
                row(co).iter_mut().for_each(|v| *v += bv);
            }
        }
    }
}

/// One im2col line: `dst[ox] = src[ox * stride + kx - pad]`, 0 where that falls outside `src`.
fn gather_line(dst: &mut [f32], src: &[f32], stride: usize, kx: usize, pad: usize) {
    let (w, wout) = (src.len(), dst.len());
    if stride == 1 {
        // Valid ox satisfy 0 <= ox + kx - pad < w: one contiguous copy plus zero edges.
        let lo = pad.saturating_sub(kx).min(wout);
        let hi = (w + pad).saturating_sub(kx).min(wout).max(lo);
        dst[..lo].fill(0.0);
        dst[hi..].fill(0.0);
        let s0 = lo + kx - pad;
        dst[lo..hi].copy_from_slice(&src[s0..s0 + (hi - lo)]);
    } else {
        for (ox, o) in dst.iter_mut().enumerate() {
            let ix = (ox * stride + kx) as isize - pad as isize;
            *o = if ix >= 0 && ix < w as isize { src[ix as usize] } else { 0.0 };
        }
    }
}

/// Fills `col` (rows = Cin*kh*kw, columns = output pixels of rows [oy0, oy1)) for one image, channels
/// in parallel where `parallel` (a lone tile whose GEMM runs on every core too).
#[allow(clippy::too_many_arguments)]
fn im2col_rows(
    img: &[f32],
    (cin, h, w): (usize, usize, usize),
    (kh, kw): (usize, usize),
    stride: usize,
    pad: usize,
    wout: usize,
    (oy0, oy1): (usize, usize),
    col: &mut [f32],
    parallel: bool,
) {
    let ncols = (oy1 - oy0) * wout;
    let fill = |ci: usize, rows: &mut [f32]| {
        let plane = &img[ci * h * w..(ci + 1) * h * w];
        for ky in 0..kh {
            for kx in 0..kw {
                let dst = &mut rows[(ky * kw + kx) * ncols..][..ncols];
                for (t, oy) in (oy0..oy1).enumerate() {
                    let out_row = &mut dst[t * wout..(t + 1) * wout];
                    let iy = (oy * stride + ky) as isize - pad as isize;
                    if iy < 0 || iy >= h as isize {
                        out_row.fill(0.0);
                        continue;
                    }
                    gather_line(out_row, &plane[iy as usize * w..(iy as usize + 1) * w], stride, kx, pad);
                }
            }
        }
    };
    let (col, per_channel) = (&mut col[..cin * kh * kw * ncols], kh * kw * ncols);
    if parallel {
        col.par_chunks_mut(per_channel).enumerate().for_each(|(ci, rows)| fill(ci, rows));
    } else {
        col.chunks_mut(per_channel).enumerate().for_each(|(ci, rows)| fill(ci, rows));
    }
}

impl Backend for CpuBackend {
    type Tensor = Tensor;

    fn name(&self) -> String {
        let precision = match self.precision {
            Precision::F32 => "",
            Precision::Tf32 => ", tf32: Winograd F(4x4, 3x3) convolutions",
            Precision::Bf16 => ", bf16 convolutions",
        };
        format!("cpu ({} threads{precision})", rayon::current_num_threads())
    }

    fn upload(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }

    fn download(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }

    fn shape<'a>(&self, t: &'a Tensor) -> &'a [usize] {
        t.shape()
    }

    fn reshape(&self, t: Tensor, shape: &[usize]) -> Result<Tensor> {
        t.reshape(shape)
    }

    fn conv2d(&self, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, stride: usize, pad: usize) -> Result<Tensor> {
        let (n, cin, h, w) = x.nchw()?;
        let (cout, wcin, kh, kw) = weight.nchw()?;
        ensure!(wcin == cin, "conv2d: input has {cin} channels, weight expects {wcin}");
        ensure!(stride >= 1, "conv2d: stride must be >= 1");
        ensure!(h + 2 * pad >= kh && w + 2 * pad >= kw, "conv2d: kernel {kh}x{kw} larger than padded input {h}x{w}");
        let bias = vector_arg(bias, cout, "conv2d bias")?;
        let hout = (h + 2 * pad - kh) / stride + 1;
        let wout = (w + 2 * pad - kw) / stride + 1;
        let kdim = cin * kh * kw;
        #[cfg(target_arch = "x86_64")]
        if stride == 1 {
            if let Some(y) = self.direct2d(x.data().into(), [n, cin, h, w], weight, bias, pad, Epilogue::None)? {
                return Ok(y);
            }
        }
        let mut out = Tensor::zeros(&[n, cout, hout, wout]);
        let rows_per_tile = (TILE_COLUMNS / wout).clamp(1, hout);
        let tiles = hout.div_ceil(rows_per_tile);
        let out_ptr = SharedMut(out.data_mut().as_mut_ptr());
        let pointwise = kh == 1 && kw == 1 && stride == 1 && pad == 0;
        let inner = gemm_parallelism(n * tiles);
        let lone = n * tiles < rayon::current_num_threads();
        (0..n * tiles).into_par_iter().for_each_init(
            || (Vec::new(), Vec::new()),
            |(col, tile_out): &mut (Vec<f32>, Vec<f32>), task| {
                let (img_idx, tile) = (task / tiles, task % tiles);
                let (oy0, oy1) = (tile * rows_per_tile, ((tile + 1) * rows_per_tile).min(hout));
                let ncols = (oy1 - oy0) * wout;
                let img = &x.data()[img_idx * cin * h * w..(img_idx + 1) * cin * h * w];
                // A 1x1 conv reads the input plane directly: its "column buffer" is the image itself.
                let (rhs, rhs_rs) = if pointwise {
                    (img[oy0 * w..].as_ptr(), (h * w) as isize)
                } else {
                    col.resize(kdim * ncols, 0.0);
                    im2col_rows(img, (cin, h, w), (kh, kw), stride, pad, wout, (oy0, oy1), col, lone);
                    (col.as_ptr(), ncols as isize)
                };
                let plane = hout * wout;
                // SAFETY: this task writes rows [oy0, oy1) of every output channel of image img_idx only;
                // rhs spans kdim rows of ncols columns.
                unsafe {
                    gemm_into_planes(
                        (cout, kdim, ncols),
                        weight.data(),
                        (rhs, rhs_rs),
                        (out_ptr.ptr().add(img_idx * cout * plane + oy0 * wout), plane),
                        bias,
                        tile_out,
                        inner,
                    )
                };
            },
        );
        Ok(out)
    }

    fn conv2d_fused(
        &self,
        x: &Tensor,
        extra: Option<&Tensor>,
        weight: &Tensor,
        bias: Option<&Tensor>,
        pad: usize,
        act: Activation,
    ) -> Result<Tensor> {
        self.conv2d_then(x, extra, weight, bias, pad, Epilogue::Activate(act))
    }

    fn conv2d_norm(
        &self,
        x: &Tensor,
        extra: Option<&Tensor>,
        weight: &Tensor,
        bias: Option<&Tensor>,
        pad: usize,
        norm: &PlaneNorm<Tensor>,
    ) -> Result<Tensor> {
        let cout = weight.shape()[0];
        let (gamma, beta) =
            (vector_arg(norm.gamma, cout, "instance_norm weight")?, vector_arg(norm.beta, cout, "instance_norm bias")?);
        self.conv2d_then(x, extra, weight, bias, pad, Epilogue::Norm { gamma, beta, eps: norm.eps, act: norm.act })
    }

    fn conv_transpose2d(&self, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let (n, cin, h, w) = x.nchw()?;
        let (wcin, cout, k, k2) = weight.nchw()?;
        ensure!(wcin == cin, "conv_transpose2d: input has {cin} channels, weight expects {wcin}");
        ensure!(k == k2, "conv_transpose2d: only square kernels (kernel = stride) are supported, got {k}x{k2}");
        let bias = vector_arg(bias, cout, "conv_transpose2d bias")?;
        #[cfg(target_arch = "x86_64")]
        if transposed::applies(k) {
            let y = transposed::conv_transpose2x2(x.data(), weight.data(), bias, [n, cin, h, w], cout);
            return Tensor::new(&[n, cout, h * k, w * k], y);
        }
        // The 3-D code with one slice: the same GEMM and scatter.
        let at = super::volume::Transposed::kernel_stride([1, k, k]);
        let g = super::volume::ConvTranspose3d::checked(n, (cin, cin, cout), [1, h, w], [1, k, k], at)?;
        volume::conv_transpose(x.data(), weight.data(), bias, &g).reshape(&[n, cout, h * k, w * k])
    }

    fn group_norm(
        &self,
        x: &mut Tensor,
        groups: usize,
        gamma: Option<&Tensor>,
        beta: Option<&Tensor>,
        eps: f32,
        act: Activation,
    ) -> Result<()> {
        let (_, c, len) = batch_channels_plane(x.shape(), "group_norm")?;
        let per_group = super::volume::channels_per_group(c, groups)?;
        let gamma = vector_arg(gamma, c, "group_norm weight")?;
        let beta = vector_arg(beta, c, "group_norm bias")?;
        x.data_mut().par_chunks_mut(per_group * len).enumerate().for_each(|(i, group)| {
            let channels = (i % groups) * per_group..(i % groups + 1) * per_group;
            let (gamma, beta) = (gamma.map(|g| &g[channels.clone()]), beta.map(|b| &b[channels]));
            elementwise::normalize_group(group, len, gamma, beta, eps, act);
        });
        Ok(())
    }

    fn activate(&self, x: &mut Tensor, act: Activation) -> Result<()> {
        if act != Activation::Identity {
            x.data_mut().par_chunks_mut(16384).for_each(|chunk| elementwise::activate(chunk, act));
        }
        Ok(())
    }

    fn max_pool2d(&self, x: &Tensor, k: usize) -> Result<Tensor> {
        let (n, c, h, w) = x.nchw()?;
        ensure!(k >= 1 && h >= k && w >= k, "max_pool2d: window {k} larger than input {h}x{w}");
        let (ho, wo) = (h / k, w / k);
        let mut out = Tensor::zeros(&[n, c, ho, wo]);
        out.data_mut().par_chunks_mut(ho * wo).enumerate().for_each(|(i, dst)| {
            let src = &x.data()[i * h * w..(i + 1) * h * w];
            if k == 2 {
                // The U-Nets' pooling: two rows at a time in slices the compiler vectorises (the general
                // loop below ran at about 3 GB/s); same maxima in the same order.
                elementwise::max_pool2x2(src, w, dst, wo);
                return;
            }
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut m = f32::NEG_INFINITY;
                    for dy in 0..k {
                        for dx in 0..k {
                            m = m.max(src[(oy * k + dy) * w + ox * k + dx]);
                        }
                    }
                    dst[oy * wo + ox] = m;
                }
            }
        });
        Ok(out)
    }

    fn upsample_bilinear2x(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = x.nchw()?;
        let (ho, wo) = (2 * h, 2 * w);
        // align_corners = true: output o samples input position o * (in - 1) / (out - 1).
        let taps = |inp: usize, out: usize| -> Vec<(usize, usize, f32)> {
            (0..out)
                .map(|o| {
                    let pos = if out > 1 { o as f64 * (inp - 1) as f64 / (out - 1) as f64 } else { 0.0 };
                    let i0 = (pos.floor() as usize).min(inp - 1);
                    let i1 = (i0 + 1).min(inp - 1);
                    (i0, i1, (pos - i0 as f64) as f32)
                })
                .collect()
        };
        let (ty, tx) = (taps(h, ho), taps(w, wo));
        let mut out = Tensor::zeros(&[n, c, ho, wo]);
        out.data_mut().par_chunks_mut(ho * wo).enumerate().for_each(|(i, dst)| {
            let src = &x.data()[i * h * w..(i + 1) * h * w];
            for (oy, &(y0, y1, fy)) in ty.iter().enumerate() {
                for (ox, &(x0, x1, fx)) in tx.iter().enumerate() {
                    let top = src[y0 * w + x0] * (1.0 - fx) + src[y0 * w + x1] * fx;
                    let bot = src[y1 * w + x0] * (1.0 - fx) + src[y1 * w + x1] * fx;
                    dst[oy * wo + ox] = top * (1.0 - fy) + bot * fy;
                }
            }
        });
        Ok(out)
    }

    fn pad_replicate_end(&self, x: &Tensor, ho: usize, wo: usize) -> Result<Tensor> {
        let (n, c, h, w) = x.nchw()?;
        ensure!(ho >= h && wo >= w && h > 0 && w > 0, "pad_replicate_end: cannot pad {h}x{w} to {ho}x{wo}");
        let mut out = Tensor::zeros(&[n, c, ho, wo]);
        out.data_mut().par_chunks_mut(ho * wo).enumerate().for_each(|(i, dst)| {
            let src = &x.data()[i * h * w..(i + 1) * h * w];
            for oy in 0..ho {
                let srow = &src[oy.min(h - 1) * w..][..w];
                let drow = &mut dst[oy * wo..][..wo];
                drow[..w].copy_from_slice(srow);
                drow[w..].fill(srow[w - 1]);
            }
        });
        Ok(out)
    }

    fn concat_channels(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let (_, ca, plane) = batch_channels_plane(a.shape(), "concat_channels")?;
        let (_, cb, _) = batch_channels_plane(b.shape(), "concat_channels")?;
        ensure!(
            a.shape()[0] == b.shape()[0] && a.shape()[2..] == b.shape()[2..],
            "concat_channels: shapes {:?} and {:?} differ outside channels",
            a.shape(),
            b.shape()
        );
        let (sa, sb) = (ca * plane, cb * plane);
        let mut shape = a.shape().to_vec();
        shape[1] = ca + cb;
        let mut out = Tensor::zeros(&shape);
        out.data_mut().par_chunks_mut(sa + sb).enumerate().for_each(|(i, dst)| {
            dst[..sa].copy_from_slice(&a.data()[i * sa..(i + 1) * sa]);
            dst[sa..].copy_from_slice(&b.data()[i * sb..(i + 1) * sb]);
        });
        Ok(out)
    }

    fn softmax_channels(&self, x: &mut Tensor) -> Result<()> {
        let (_, c, hw) = batch_channels_plane(x.shape(), "softmax_channels")?;
        x.data_mut().par_chunks_mut(c * hw).for_each(|img| {
            for p in 0..hw {
                let m = (0..c).map(|ch| img[ch * hw + p]).fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0;
                for ch in 0..c {
                    let e = (img[ch * hw + p] - m).exp();
                    img[ch * hw + p] = e;
                    sum += e;
                }
                for ch in 0..c {
                    img[ch * hw + p] /= sum;
                }
            }
        });
        Ok(())
    }

    fn conv3d(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        stride: [usize; 3],
        pad: [usize; 3],
    ) -> Result<Tensor> {
        // f32 whatever the precision, as on the GPU (whose 3-D path has no reduced-precision variant).
        volume::conv3d(x, weight, bias, stride, pad)
    }

    fn conv_transpose3d(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        at: super::volume::Transposed,
    ) -> Result<Tensor> {
        volume::conv_transpose3d(x, weight, bias, at)
    }

    fn max_pool3d(&self, x: &Tensor, k: [usize; 3]) -> Result<Tensor> {
        volume::max_pool3d(x, k)
    }

    fn upsample_trilinear(&self, x: &Tensor, size: [usize; 3], align_corners: bool) -> Result<Tensor> {
        volume::upsample_trilinear(x, size, align_corners)
    }

    fn pad_replicate_end3d(&self, x: &Tensor, size: [usize; 3]) -> Result<Tensor> {
        volume::pad_replicate_end3d(x, size)
    }

    fn flip3d(&self, x: &Tensor, axes: [bool; 3]) -> Result<Tensor> {
        volume::flip3d(x, axes)
    }

    fn linear(&self, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let [out_f, in_f] = weight.shape()[..] else {
            bail!("linear: weight must be (out, in), got {:?}", weight.shape())
        };
        let last = *x.shape().last().unwrap_or(&0);
        ensure!(last == in_f, "linear: input's last axis is {last}, weight expects {in_f}");
        let bias = vector_arg(bias, out_f, "linear bias")?;
        let rows = x.len() / in_f;
        let mut shape = x.shape().to_vec();
        *shape.last_mut().unwrap() = out_f;
        let mut out = Tensor::zeros(&shape);
        // rhs = W^T: element (k, j) is W[j, k].
        // SAFETY: x, weight and out were checked to hold rows x in_f, out_f x in_f and rows x out_f.
        unsafe {
            matmul(
                rows,
                out_f,
                in_f,
                out.data_mut().as_mut_ptr(),
                out_f as isize,
                1,
                x.data().as_ptr(),
                in_f as isize,
                1,
                weight.data().as_ptr(),
                1,
                in_f as isize,
                threads(),
            );
        }
        if let Some(b) = bias {
            out.data_mut().par_chunks_mut(out_f).for_each(|row| row.iter_mut().zip(b).for_each(|(v, bv)| *v += bv));
        }
        Ok(out)
    }

    fn layer_norm(&self, x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<Tensor> {
        let d = *x.shape().last().unwrap_or(&0);
        ensure!(gamma.len() == d && beta.len() == d, "layer_norm: weight/bias must have {d} values");
        let mut out = x.clone();
        out.data_mut().par_chunks_mut(d).for_each(|row| {
            let mean = row.iter().sum::<f32>() / d as f32;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
            let inv = 1.0 / (var + eps).sqrt();
            for ((v, g), b) in row.iter_mut().zip(gamma.data()).zip(beta.data()) {
                *v = (*v - mean) * inv * g + b;
            }
        });
        Ok(out)
    }

    fn softmax_last(&self, x: &mut Tensor) -> Result<()> {
        let d = *x.shape().last().unwrap_or(&0);
        ensure!(d > 0, "softmax_last: empty last axis");
        x.data_mut().par_chunks_mut(d).for_each(softmax_in_place);
        Ok(())
    }

    fn attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, causal: bool) -> Result<Tensor> {
        let [b, lq, width] = q.shape()[..] else { bail!("attention: q must be (B, L, D), got {:?}", q.shape()) };
        ensure!(k.shape() == v.shape(), "attention: k {:?} and v {:?} differ", k.shape(), v.shape());
        let [kb, lk, kw] = k.shape()[..] else { bail!("attention: k must be (B, L, D)") };
        ensure!((kb, kw) == (b, width), "attention: q {:?} and k {:?} do not match", q.shape(), k.shape());
        ensure!(heads >= 1 && width % heads == 0, "attention: width {width} does not split into {heads} heads");
        let d = width / heads;
        let scale = 1.0 / (d as f32).sqrt();
        let mut out = Tensor::zeros(&[b, lq, width]);
        let out_ptr = SharedMut(out.data_mut().as_mut_ptr());
        (0..b * heads).into_par_iter().for_each_init(Vec::new, |scores: &mut Vec<f32>, task| {
            let (i, h) = (task / heads, task % heads);
            // Head h of item i: columns [h*d, (h+1)*d) of rows with stride `width`.
            let (qi, ki, vi) = (
                &q.data()[i * lq * width + h * d..],
                &k.data()[i * lk * width + h * d..],
                &v.data()[i * lk * width + h * d..],
            );
            scores.resize(lq * lk, 0.0);
            // SAFETY: scores holds lq x lk; qi and ki cover lq (lk) rows of width `width` from offset h*d.
            unsafe {
                // scores = Q K^T (rhs element (c, j) = K[j, c]).
                matmul(
                    lq,
                    lk,
                    d,
                    scores.as_mut_ptr(),
                    lk as isize,
                    1,
                    qi.as_ptr(),
                    width as isize,
                    1,
                    ki.as_ptr(),
                    1,
                    width as isize,
                    Parallelism::None,
                );
            }
            for (r, row) in scores.chunks_mut(lk).enumerate() {
                row.iter_mut().for_each(|s| *s *= scale);
                if causal {
                    row[(r + 1).min(lk)..].fill(f32::NEG_INFINITY);
                }
                softmax_in_place(row);
            }
            // SAFETY: this task writes columns [h*d, (h+1)*d) of item i only.
            unsafe {
                let dst = out_ptr.ptr().add(i * lq * width + h * d);
                matmul(
                    lq,
                    d,
                    lk,
                    dst,
                    width as isize,
                    1,
                    scores.as_ptr(),
                    lk as isize,
                    1,
                    vi.as_ptr(),
                    width as isize,
                    1,
                    Parallelism::None,
                );
            }
        });
        Ok(out)
    }

    fn add(&self, a: &mut Tensor, b: &Tensor) -> Result<()> {
        ensure!(a.shape() == b.shape(), "add: shapes {:?} and {:?} differ", a.shape(), b.shape());
        a.data_mut()
            .par_chunks_mut(16384)
            .zip(b.data().par_chunks(16384))
            .for_each(|(x, y)| x.iter_mut().zip(y).for_each(|(p, q)| *p += q));
        Ok(())
    }

    fn perturb(&self, scene: &Scene<Tensor>, masks: &MaskBatch, first: usize, n: usize) -> Result<(Tensor, Tensor)> {
        perturb::perturb(scene, masks, first, n)
    }

    fn segmentation_scores(&self, logits: &Tensor, m0: &Tensor, class: usize, kind: ScoreKind) -> Result<Tensor> {
        perturb::segmentation_scores(logits, m0, class, kind)
    }

    fn accumulate_weighted(&self, acc: &mut Tensor, weights: &Tensor, masks: &Tensor) -> Result<()> {
        perturb::accumulate_weighted(acc, weights, masks)
    }

    fn head_scores(
        &self,
        features: &Tensor,
        (weight, bias): (&Tensor, &Tensor),
        m0: &Tensor,
        class: usize,
        kind: ScoreKind,
    ) -> Result<Tensor> {
        match kind {
            ScoreKind::MeanProb | ScoreKind::LogitSum => {
                head::m0_head_scores(features, (weight, bias), m0, class, kind)
            }
            ScoreKind::SoftDice | ScoreKind::Dice => {
                super::head_then_scores(self, features, (weight, bias), m0, class, kind)
            }
        }
    }
}

fn softmax_in_place(row: &mut [f32]) {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    row.iter_mut().for_each(|v| {
        *v = (*v - m).exp();
        sum += *v;
    });
    row.iter_mut().for_each(|v| *v /= sum);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Philox;

    fn random(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let rng = Philox::new(seed);
        Tensor::new(shape, (0..n as u64).map(|i| rng.uniform(i) * 2.0 - 1.0).collect()).unwrap()
    }

    #[test]
    fn transposed_convolution_of_one_image_is_the_same_alone_or_in_a_batch() {
        // Alone it runs its GEMM and channels in parallel, in a batch one image per thread: the values
        // must not depend on which (explanations are bit-identical whatever the batch).
        let (x, w, b) = (random(&[3, 24, 20, 18], 1), random(&[24, 16, 2, 2], 2), random(&[16], 3));
        let batch = CpuBackend.conv_transpose2d(&x, &w, Some(&b)).unwrap();
        let plane = 16 * 40 * 36;
        for i in 0..3 {
            let one = Tensor::new(&[1, 24, 20, 18], x.data()[i * 24 * 360..(i + 1) * 24 * 360].to_vec()).unwrap();
            let alone = CpuBackend.conv_transpose2d(&one, &w, Some(&b)).unwrap();
            assert_eq!(alone.data(), &batch.data()[i * plane..(i + 1) * plane], "image {i}");
        }
    }

    #[test]
    fn convolution_of_one_small_image_is_the_same_alone_or_in_a_batch() {
        // Alone its one tile's GEMM runs on every core (gemm_parallelism), in a batch one tile per thread:
        // wide layers on a small plane (the GEMM path) and a strided thin one (the channel-fastest tile).
        for (cin, cout, side, stride) in [(64, 128, 8, 1), (16, 32, 12, 2)] {
            let (x, w, b) = (random(&[3, cin, side, side], 4), random(&[cout, cin, 3, 3], 5), random(&[cout], 6));
            let batch = CpuBackend.conv2d(&x, &w, Some(&b), stride, 1).unwrap();
            let plane = batch.len() / 3;
            for i in 0..3 {
                let len = cin * side * side;
                let one = Tensor::new(&[1, cin, side, side], x.data()[i * len..(i + 1) * len].to_vec()).unwrap();
                let alone = CpuBackend.conv2d(&one, &w, Some(&b), stride, 1).unwrap();
                assert_eq!(alone.data(), &batch.data()[i * plane..(i + 1) * plane], "{cin}->{cout}: image {i}");
            }
        }
    }

    /// Direct 7-loop convolution: slow and obviously right.
    fn naive_conv(x: &Tensor, w: &Tensor, b: &Tensor, stride: usize, pad: usize) -> Tensor {
        let (n, cin, h, wd) = x.nchw().unwrap();
        let (cout, _, kh, kw) = w.nchw().unwrap();
        let (ho, wo) = ((h + 2 * pad - kh) / stride + 1, (wd + 2 * pad - kw) / stride + 1);
        let mut out = Tensor::zeros(&[n, cout, ho, wo]);
        for i in 0..n {
            for co in 0..cout {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let mut acc = b.data()[co] as f64;
                        for ci in 0..cin {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy = (oy * stride + ky) as isize - pad as isize;
                                    let ix = (ox * stride + kx) as isize - pad as isize;
                                    if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < wd {
                                        acc += x.data()[((i * cin + ci) * h + iy as usize) * wd + ix as usize] as f64
                                            * w.data()[((co * cin + ci) * kh + ky) * kw + kx] as f64;
                                    }
                                }
                            }
                        }
                        out.data_mut()[((i * cout + co) * ho + oy) * wo + ox] = acc as f32;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn conv2d_matches_direct_convolution() {
        // Shapes cover: 3x3 pad 1, odd sizes, stride 2, 1x1, rows split over several tiles, and both
        // output paths (channel-fastest tile for Cout <= 64 and K >= 32, direct NCHW otherwise).
        for (seed, &(n, cin, cout, h, w, k, s, p)) in [
            (2, 3, 5, 9, 7, 3, 1, 1),
            (1, 4, 6, 11, 13, 3, 2, 1),
            (3, 5, 2, 6, 6, 1, 1, 0),
            (1, 2, 3, 70, 100, 3, 1, 1),
            (1, 2, 2, 8, 9, 5, 1, 2),
            (2, 8, 16, 70, 100, 3, 1, 1),
            (1, 4, 80, 9, 9, 3, 1, 1),
        ]
        .iter()
        .enumerate()
        {
            let x = random(&[n, cin, h, w], seed as u64 * 3);
            let wt = random(&[cout, cin, k, k], seed as u64 * 3 + 1);
            let b = random(&[cout], seed as u64 * 3 + 2);
            let got = CpuBackend.conv2d(&x, &wt, Some(&b), s, p).unwrap();
            let want = naive_conv(&x, &wt, &b, s, p);
            // Floor 0.05: outputs are O(1) sums of f32 products, so near-zero outputs carry ~1e-6 absolute rounding.
            let err = got.max_rel_error(&want, 0.05);
            assert!(err < 1e-4, "case {seed}: rel err {err}");
        }
    }

    #[test]
    fn conv_transpose_places_each_tap() {
        let x = random(&[2, 3, 4, 5], 11);
        let wt = random(&[3, 2, 2, 2], 12);
        let b = random(&[2], 13);
        let got = CpuBackend.conv_transpose2d(&x, &wt, Some(&b)).unwrap();
        for (i, co, oy, ox) in [(0, 0, 0, 0), (1, 1, 7, 9), (0, 1, 3, 4), (1, 0, 6, 1)] {
            let mut want = b.data()[co] as f64;
            for ci in 0..3 {
                want += x.data()[((i * 3 + ci) * 4 + oy / 2) * 5 + ox / 2] as f64
                    * wt.data()[((ci * 2 + co) * 2 + oy % 2) * 2 + ox % 2] as f64;
            }
            let g = got.data()[((i * 2 + co) * 8 + oy) * 10 + ox];
            assert!((g as f64 - want).abs() < 1e-5, "{g} vs {want}");
        }
    }

    #[test]
    fn cache_aligned_blocks_start_on_a_cache_line_and_keep_their_contents() {
        let a = CacheAligned;
        // SAFETY: every block below is freed once, with the layout (or the size) it was made with.
        unsafe {
            let layout = Layout::from_size_align(4096, 4).unwrap();
            let p = a.alloc_zeroed(layout);
            assert_eq!(p as usize % 64, 0, "a 4 KiB block is cache-line aligned");
            assert!(std::slice::from_raw_parts(p, 4096).iter().all(|&b| b == 0));
            p.add(1000).write(7);
            // Grown past the huge-page threshold and shrunk below the 1 KiB one: moved with its contents.
            let p = a.realloc(p, layout, 8 << 20);
            assert_eq!((p as usize % 64, p.add(1000).read()), (0, 7));
            let p = a.realloc(p, Layout::from_size_align(8 << 20, 4).unwrap(), 1001);
            assert_eq!(p.add(1000).read(), 7);
            a.dealloc(p, Layout::from_size_align(1001, 4).unwrap());
            let big = Layout::from_size_align(5 << 20, 4).unwrap();
            let p = a.alloc_zeroed(big);
            assert!(std::slice::from_raw_parts(p, 5 << 20).iter().all(|&b| b == 0));
            a.dealloc(p, big);
            let small = Layout::from_size_align(100, 4).unwrap();
            let q = a.alloc(small);
            assert!(!q.is_null());
            a.dealloc(q, small);
        }
    }

    #[test]
    fn conv_with_the_norm_in_its_epilogue_gives_the_bits_of_the_separate_calls() {
        // Winograd with a skip read in place (8 + 8 channels, 20 wide), the direct kernel (3 channels),
        // im2col + GEMM (80 outputs on a 12-wide plane); a batch of 1 (rows shared out) and of 5 (whole
        // images per task, then the last one shared out).
        for (cin, skip, cout, side) in [(8, 8, 16, 20), (3, 0, 16, 20), (8, 0, 80, 12)] {
            for n in [1, 5] {
                let x = random(&[n, cin, side, side], 1);
                let extra = (skip > 0).then(|| random(&[n, skip, side, side], 2));
                let (w, b) = (random(&[cout, cin + skip, 3, 3], 3), random(&[cout], 4));
                let (gamma, beta) = (random(&[cout], 5), random(&[cout], 6));
                for (gamma, act) in [(Some(&gamma), Activation::LeakyRelu(0.1)), (None, Activation::Identity)] {
                    let mut want =
                        CpuBackend.conv2d_fused(&x, extra.as_ref(), &w, Some(&b), 1, Activation::Identity).unwrap();
                    CpuBackend.instance_norm(&mut want, gamma, Some(&beta), 1e-5, act).unwrap();
                    let norm = PlaneNorm { gamma, beta: Some(&beta), eps: 1e-5, act };
                    let got = CpuBackend.conv2d_norm(&x, extra.as_ref(), &w, Some(&b), 1, &norm).unwrap();
                    assert_eq!(got, want, "{cin}+{skip}->{cout} @{side}, batch {n}, {act:?}");
                }
            }
        }
    }

    #[test]
    fn instance_norm_gives_zero_mean_unit_variance() {
        let mut x = random(&[2, 3, 10, 10], 5);
        CpuBackend.instance_norm(&mut x, None, None, 0.0, Activation::Identity).unwrap();
        for plane in x.data().chunks(100) {
            let mean: f32 = plane.iter().sum::<f32>() / 100.0;
            let var: f32 = plane.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / 100.0;
            assert!(mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-4, "mean {mean} var {var}");
        }
    }

    #[test]
    fn upsample_keeps_corners_and_interpolates() {
        let x = Tensor::new(&[1, 1, 2, 2], vec![0.0, 3.0, 6.0, 9.0]).unwrap();
        let y = CpuBackend.upsample_bilinear2x(&x).unwrap();
        let d = y.data();
        assert_eq!((d[0], d[3], d[12], d[15]), (0.0, 3.0, 6.0, 9.0));
        assert!((d[1] - 1.0).abs() < 1e-6); // 1/3 of the way from 0 to 3
    }

    #[test]
    fn linear_and_attention_match_naive() {
        let x = random(&[2, 3, 8], 21);
        let w = random(&[5, 8], 22);
        let b = random(&[5], 23);
        let y = CpuBackend.linear(&x, &w, Some(&b)).unwrap();
        for r in 0..6 {
            for j in 0..5 {
                let want: f32 = b.data()[j] + (0..8).map(|c| x.data()[r * 8 + c] * w.data()[j * 8 + c]).sum::<f32>();
                assert!((y.data()[r * 5 + j] - want).abs() < 1e-5);
            }
        }
        // Two heads of width 3 over (B=1, L=4, D=6).
        let (q, k, v) = (random(&[1, 4, 6], 31), random(&[1, 4, 6], 32), random(&[1, 4, 6], 33));
        for causal in [false, true] {
            let o = CpuBackend.attention(&q, &k, &v, 2, causal).unwrap();
            for h in 0..2 {
                for i in 0..4 {
                    let at = |t: &Tensor, row: usize, c: usize| t.data()[row * 6 + h * 3 + c];
                    let keys = if causal { i + 1 } else { 4 };
                    let s: Vec<f32> = (0..keys)
                        .map(|j| (0..3).map(|c| at(&q, i, c) * at(&k, j, c)).sum::<f32>() / 3f32.sqrt())
                        .collect();
                    let m = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let z: f32 = s.iter().map(|v| (v - m).exp()).sum();
                    for c in 0..3 {
                        let want: f32 = (0..keys).map(|j| (s[j] - m).exp() / z * at(&v, j, c)).sum();
                        assert!((at(&o, i, c) - want).abs() < 1e-5);
                    }
                }
            }
        }
    }

    #[test]
    fn gelu_variants_match_known_values() {
        assert!((Activation::Gelu.apply(1.0) - 0.841_344_7).abs() < 1e-6);
        assert!((Activation::QuickGelu.apply(1.0) - 1.0 / (1.0 + (-1.702f32).exp())).abs() < 1e-7);
        assert_eq!(Activation::LeakyRelu(0.1).apply(-2.0), -0.2);
    }
}
