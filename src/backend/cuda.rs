//! CUDA backend: the `Backend` calls on device-resident tensors, each one launch of a hand-written kernel
//! from kernels/*.cu (compiled by build.rs, loaded through cudarc). The CPU backend is every kernel's twin;
//! `xaiclip selftest --device cuda` compares them on fresh random inputs.
//!
//! One stream per backend, so cudarc's per-buffer event tracking is switched off and kernels take raw
//! device pointers: launches on one stream are ordered, and a buffer is freed only after the host call
//! that used it returned (the stream is drained on download).

use super::kernels::Kernel;
use super::perturb::{MaskBatch, ScoreKind};
use super::volume;
use super::{perturb::Scene, Activation, Backend};
use crate::error::{Error, ErrorKind};
use crate::tensor::Tensor;
use anyhow::{anyhow, bail, ensure, Context, Result};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

mod built {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}
pub use built::{BUILD_STATUS, MODULES, PTXAS_REPORT};

/// Operand precision of the convolution kernels (accumulation is always f32).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// Plain f32 operands (matches the CPU to ~1e-6).
    F32,
    /// TensorFloat-32 operands on the tensor cores (~1e-3 relative); on the CPU, f32 on Winograd
    /// F(4x4, 3x3) (a few 1e-6 of a layer's largest output).
    Tf32,
    /// bfloat16 operands on the tensor cores (~1e-2 relative), or on a CPU with AVX512-BF16.
    Bf16,
}

#[derive(Clone)]
/// A device buffer and its shape.
pub struct CudaTensor {
    buf: CudaSlice<f32>,
    shape: Vec<usize>,
}

/// The `Backend` calls as launches of kernels/*.cu on one CUDA device and one stream.
pub struct CudaBackend {
    ordinal: usize,
    device_name: String,
    precision: Precision,
    stream: Arc<CudaStream>,
    modules: Vec<Arc<CudaModule>>,
    functions: Mutex<HashMap<Kernel, CudaFunction>>,
    /// Fill new tensors with NaN instead of zeros (selftest: an output element a kernel never wrote
    /// then shows up as NaN, which never passes).
    poison: AtomicBool,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct ConvArgs {
    xa: u64,
    xb: u64,
    weight: u64,
    bias: u64,
    y: u64,
    n: i32,
    ca: i32,
    cb: i32,
    h: i32,
    wd: i32,
    cout: i32,
    kh: i32,
    kw: i32,
    stride: i32,
    pad: i32,
    hout: i32,
    wout: i32,
    act: i32,
    slope: f32,
}
// SAFETY: plain #[repr(C)] data with the layout of kernels/conv.cu's ConvArgs (checked below and by a
// static_assert there), passed to the kernel by value.
unsafe impl DeviceRepr for ConvArgs {}
// The same size and field offsets as kernels/conv.cu asserts for its ConvArgs.
const _: () = assert!(std::mem::size_of::<ConvArgs>() == 96 && std::mem::offset_of!(ConvArgs, n) == 40);
const _: () = assert!(std::mem::offset_of!(ConvArgs, act) == 88 && std::mem::offset_of!(ConvArgs, slope) == 92);

#[repr(C)]
#[derive(Clone, Copy)]
struct Conv3dArgs {
    x: u64,
    weight: u64,
    bias: u64,
    y: u64,
    /// n, cin, d, h, w, cout, kd, kh, kw, sd, sh, sw, pd, ph, pw, od, oh, ow.
    dims: [i32; 18],
}
// SAFETY: plain #[repr(C)] data with the layout of kernels/volume.cu's Conv3dArgs (checked below and by
// a static_assert there), passed to the kernel by value.
unsafe impl DeviceRepr for Conv3dArgs {}
const _: () = assert!(std::mem::size_of::<Conv3dArgs>() == 104 && std::mem::offset_of!(Conv3dArgs, dims) == 32);

#[repr(C)]
#[derive(Clone, Copy)]
struct PerturbArgs {
    input: u64,
    baseline: u64,
    roi: u64,
    masks: u64,
    images: u64,
    n: i32,
    size: i32,
}
// SAFETY: plain #[repr(C)] data with the layout of kernels/perturb.cu's PerturbArgs (checked below and by
// a static_assert there), passed to the kernel by value.
unsafe impl DeviceRepr for PerturbArgs {}
const _: () = assert!(std::mem::size_of::<PerturbArgs>() == 48 && std::mem::offset_of!(PerturbArgs, n) == 40);

/// A driver call's failure, typed as out of memory when it is (callers retry with a smaller batch).
fn driver<T>(r: std::result::Result<T, cudarc::driver::DriverError>, what: &str) -> Result<T> {
    r.map_err(|e| {
        let kind = if e.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            ErrorKind::OutOfMemory
        } else {
            ErrorKind::Other
        };
        anyhow::Error::new(Error::new(kind, format!("CUDA {what}: {e}")))
    })
}

/// (code, LeakyReLU slope) as kernels/common.cuh numbers them.
fn act_code(act: Activation) -> (i32, f32) {
    match act {
        Activation::Identity => (0, 0.0),
        Activation::Relu => (1, 0.0),
        Activation::LeakyRelu(s) => (2, s),
        Activation::QuickGelu => (3, 0.0),
        Activation::Gelu => (4, 0.0),
    }
}

fn i32_of(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| anyhow!("{what} = {v} does not fit the kernels' 32-bit indices"))
}

/// Grid-stride launch over `n` elements.
fn elementwise(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(256).clamp(1, 132 * 16) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

fn nchw(t: &CudaTensor, what: &str) -> Result<(usize, usize, usize, usize)> {
    match t.shape[..] {
        [n, c, h, w] => Ok((n, c, h, w)),
        _ => bail!("{what}: expected NCHW, got {:?}", t.shape),
    }
}

/// Launches kernel `$name` of `$backend` with `$cfg` and the listed argument references; checks the launch.
macro_rules! launch {
    ($backend:expr, $kernel:expr, $cfg:expr, [$($arg:expr),* $(,)?] $(, extra = $extra:expr)?) => {{
        let kernel: Kernel = $kernel;
        let f = $backend.function(kernel)?;
        let mut builder = $backend.stream.launch_builder(&f);
        $( builder.arg($arg); )*
        $( for e in $extra { builder.arg(e); } )?
        // SAFETY: every kernel's parameter list matches what its caller pushes (kernels/*.cu), and the
        // pointers pushed are live allocations of this backend's stream.
        driver(unsafe { builder.launch($cfg) }, kernel.name()).map(|_| ())
    }};
}

impl CudaBackend {
    /// Opens device `ordinal`. Every way this can fail says what to do: built without nvcc, no driver,
    /// no such device, kernels the driver cannot load.
    pub fn new(ordinal: usize, precision: Precision) -> Result<Self> {
        ensure!(!MODULES.is_empty(), "{BUILD_STATUS}");
        // SAFETY: only probes whether libcuda can be loaded; without it cudarc would panic on first use.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            bail!("no CUDA driver found (libcuda.so could not be loaded): run on a machine with an NVIDIA driver, or use --device cpu");
        }
        let count = driver(CudaContext::device_count(), "device count")?;
        ensure!(count > 0, "the CUDA driver reports no GPU: use --device cpu");
        ensure!(
            ordinal < count as usize,
            "no CUDA device {ordinal}: this machine has {count} (cuda:0 to cuda:{})",
            count - 1
        );
        let ctx = driver(CudaContext::new(ordinal), "context")?;
        // SAFETY: this backend uses one stream for everything (see the module comment).
        unsafe { ctx.disable_event_tracking() };
        let device_name = driver(ctx.name(), "device name")?;
        let modules = MODULES
            .iter()
            .map(|(name, image)| {
                driver(
                    ctx.load_module(cudarc::nvrtc::Ptx::from_binary(image.to_vec())),
                    &format!("loading kernels/{name}.cu"),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            ordinal,
            device_name,
            precision,
            stream: ctx.default_stream(),
            modules,
            functions: Mutex::new(HashMap::new()),
            poison: AtomicBool::new(false),
        })
    }

    /// The convolutions' operand precision.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Device-to-device copy rate (bytes read + written per second) over 1 GiB, median of 10.
    pub fn copy_bandwidth(&self) -> Result<f64> {
        let len = (1usize << 30) / 4;
        let src = driver(self.stream.alloc_zeros::<f32>(len), "alloc")?;
        let mut dst = driver(self.stream.alloc_zeros::<f32>(len), "alloc")?;
        let mut times = Vec::new();
        for _ in 0..11 {
            let t = std::time::Instant::now();
            driver(self.stream.memcpy_dtod(&src, &mut dst), "copy")?;
            Backend::synchronize(self)?;
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        Ok(2.0 * (len * 4) as f64 / times[times.len() / 2])
    }

    /// Fills new tensors with NaN (selftest: an element a kernel never writes then fails its check).
    pub fn set_poison(&self, on: bool) {
        self.poison.store(on, Ordering::Relaxed);
    }

    /// The kernel's function, loaded from its own module on first use.
    fn function(&self, kernel: Kernel) -> Result<CudaFunction> {
        let mut cache = self.functions.lock().map_err(|_| anyhow!("kernel cache poisoned"))?;
        if let Some(f) = cache.get(&kernel) {
            return Ok(f.clone());
        }
        let index = MODULES
            .iter()
            .position(|(stem, _)| *stem == kernel.module())
            .with_context(|| format!("kernels/{}.cu was not built", kernel.module()))?;
        let f = self.modules[index]
            .load_function(kernel.name())
            .map_err(|e| anyhow!("kernel {} is not in kernels/{}.cu: {e}", kernel.name(), kernel.module()))?;
        cache.insert(kernel, f.clone());
        Ok(f)
    }

    fn ptr(&self, t: &CudaSlice<f32>) -> u64 {
        t.device_ptr(&self.stream).0
    }

    fn opt_ptr(&self, t: Option<&CudaTensor>) -> u64 {
        t.map_or(0, |t| self.ptr(&t.buf))
    }

    fn alloc(&self, shape: &[usize]) -> Result<CudaTensor> {
        let len = shape.iter().product::<usize>().max(1);
        // Left uninitialised: every kernel writes all of its output (the selftest's poisoned outputs
        // check that), so zeroing would only add a pass over memory.
        // SAFETY: f32 has no invalid bit patterns and nothing reads the buffer before a kernel writes it.
        let buf = driver(unsafe { self.stream.alloc::<f32>(len) }, "alloc")?;
        if self.poison.load(Ordering::Relaxed) {
            // SAFETY: buf is a live allocation of len f32 on this stream; all-ones bytes are a NaN.
            driver(
                unsafe {
                    cudarc::driver::result::memset_d8_async(self.ptr(&buf), 0xFF, len * 4, self.stream.cu_stream())
                },
                "poison",
            )?;
        }
        Ok(CudaTensor { buf, shape: shape.to_vec() })
    }

    fn vector_ptr(&self, t: Option<&CudaTensor>, len: usize, what: &str) -> Result<u64> {
        if let Some(t) = t {
            ensure!(t.buf.len() == len, "{what} has {} values, expected {len}", t.buf.len());
        }
        Ok(self.opt_ptr(t))
    }

    #[allow(clippy::too_many_arguments)]
    fn conv(
        &self,
        x: &CudaTensor,
        extra: Option<&CudaTensor>,
        weight: &CudaTensor,
        bias: Option<&CudaTensor>,
        stride: usize,
        pad: usize,
        act: Activation,
    ) -> Result<CudaTensor> {
        let (n, ca, h, w) = nchw(x, "conv2d input")?;
        let cb = match extra {
            Some(e) => {
                let (ne, ce, he, we) = nchw(e, "conv2d second input")?;
                ensure!(
                    (ne, he, we) == (n, h, w),
                    "conv2d: inputs {:?} and {:?} differ outside channels",
                    x.shape,
                    e.shape
                );
                ce
            }
            None => 0,
        };
        let (cout, wcin, kh, kw) = nchw(weight, "conv2d weight")?;
        ensure!(wcin == ca + cb, "conv2d: input has {} channels, weight expects {wcin}", ca + cb);
        ensure!(
            stride >= 1 && h + 2 * pad >= kh && w + 2 * pad >= kw,
            "conv2d: kernel {kh}x{kw} stride {stride} does not fit {h}x{w} padded by {pad}"
        );
        let bias = self.vector_ptr(bias, cout, "conv2d bias")?;
        let (hout, wout) = ((h + 2 * pad - kh) / stride + 1, (w + 2 * pad - kw) / stride + 1);
        let y = self.alloc(&[n, cout, hout, wout])?;
        let (act, slope) = act_code(act);
        let args = ConvArgs {
            xa: self.ptr(&x.buf),
            xb: self.opt_ptr(extra),
            weight: self.ptr(&weight.buf),
            bias,
            y: self.ptr(&y.buf),
            n: i32_of(n, "batch")?,
            ca: i32_of(ca, "channels")?,
            cb: i32_of(cb, "channels")?,
            h: i32_of(h, "height")?,
            wd: i32_of(w, "width")?,
            cout: i32_of(cout, "channels")?,
            kh: i32_of(kh, "kernel")?,
            kw: i32_of(kw, "kernel")?,
            stride: i32_of(stride, "stride")?,
            pad: i32_of(pad, "pad")?,
            hout: i32_of(hout, "height")?,
            wout: i32_of(wout, "width")?,
            act,
            slope,
        };
        let pixels = n * hout * wout;
        // (kernel, rows of Cout per block, pixels per block, threads): thin layers get thin tiles.
        let (name, bm, bn, threads) = match self.precision {
            Precision::Tf32 => (Kernel::Conv2dTf32, 64, 64, 128),
            Precision::Bf16 => (Kernel::Conv2dBf16, 64, 64, 128),
            Precision::F32 if cout <= 16 => (Kernel::Conv2dF32M16, 16, 256, 256),
            Precision::F32 if cout <= 32 => (Kernel::Conv2dF32M32, 32, 128, 256),
            Precision::F32 => (Kernel::Conv2dF32M64, 64, 64, 256),
        };
        let cfg = LaunchConfig {
            grid_dim: (pixels.div_ceil(bn) as u32, cout.div_ceil(bm) as u32, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };
        launch!(self, name, cfg, [&args])?;
        Ok(y)
    }

    /// Runs `name(x, y, volumes, d, h, w, extra...)`-style volume kernels that write a new tensor.
    fn volume_op(&self, kernel: Kernel, x: &CudaTensor, out_shape: &[usize], extra: &[i32]) -> Result<CudaTensor> {
        let (n, c, [d, h, w]) = volume::ncdhw(&x.shape, kernel.name())?;
        let y = self.alloc(out_shape)?;
        let (xp, yp, volumes) = (self.ptr(&x.buf), self.ptr(&y.buf), (n * c) as i64);
        let (d, h, w) = (i32_of(d, "depth")?, i32_of(h, "height")?, i32_of(w, "width")?);
        launch!(self, kernel, elementwise(y.buf.len()), [&xp, &yp, &volumes, &d, &h, &w], extra = extra)?;
        Ok(y)
    }

    /// Runs `name(x, y, planes, h, w, extra...)`-style plane kernels that write a new tensor.
    fn plane_op(&self, kernel: Kernel, x: &CudaTensor, out_shape: &[usize], extra: &[i32]) -> Result<CudaTensor> {
        let (n, c, h, w) = nchw(x, kernel.name())?;
        let y = self.alloc(out_shape)?;
        let (xp, yp, planes) = (self.ptr(&x.buf), self.ptr(&y.buf), (n * c) as i64);
        let (h, w) = (i32_of(h, "height")?, i32_of(w, "width")?);
        launch!(self, kernel, elementwise(y.buf.len()), [&xp, &yp, &planes, &h, &w], extra = extra)?;
        Ok(y)
    }
}

impl Backend for CudaBackend {
    type Tensor = CudaTensor;

    fn name(&self) -> String {
        format!("cuda:{} ({}, {:?} convolutions)", self.ordinal, self.device_name, self.precision)
    }

    fn upload(&self, t: &Tensor) -> Result<CudaTensor> {
        Ok(CudaTensor { buf: driver(self.stream.clone_htod(t.data()), "upload")?, shape: t.shape().to_vec() })
    }

    fn download(&self, t: &CudaTensor) -> Result<Tensor> {
        let data = driver(self.stream.clone_dtoh(&t.buf), "download")?;
        // The copy is queued behind every kernel that produced `t`; wait for it (and surface any kernel
        // fault here, with its error code) before the host reads the data.
        Backend::synchronize(self)?;
        let len = t.shape.iter().product::<usize>();
        Tensor::new(&t.shape, data[..len].to_vec())
    }

    fn shape<'a>(&self, t: &'a CudaTensor) -> &'a [usize] {
        &t.shape
    }

    fn reshape(&self, t: CudaTensor, shape: &[usize]) -> Result<CudaTensor> {
        let n: usize = shape.iter().product();
        ensure!(n == t.buf.len(), "cannot reshape {:?} ({} values) to {shape:?}", t.shape, t.buf.len());
        Ok(CudaTensor { buf: t.buf, shape: shape.to_vec() })
    }

    /// A quarter of the free device memory (at most 32 GiB) and batches up to 512: a GPU needs large
    /// batches to fill its multiprocessors.
    fn memory_available(&self) -> usize {
        self.stream.context().mem_get_info().map_or(8 << 30, |(free, _)| free)
    }

    fn batch_budget(&self) -> (usize, usize) {
        ((self.memory_available() / 4).min(32 << 30), 512)
    }

    fn synchronize(&self) -> Result<()> {
        driver(self.stream.synchronize(), "synchronize")
    }

    fn conv2d(
        &self,
        x: &CudaTensor,
        weight: &CudaTensor,
        bias: Option<&CudaTensor>,
        stride: usize,
        pad: usize,
    ) -> Result<CudaTensor> {
        self.conv(x, None, weight, bias, stride, pad, Activation::Identity)
    }

    fn conv2d_fused(
        &self,
        x: &CudaTensor,
        extra: Option<&CudaTensor>,
        weight: &CudaTensor,
        bias: Option<&CudaTensor>,
        pad: usize,
        act: Activation,
    ) -> Result<CudaTensor> {
        self.conv(x, extra, weight, bias, 1, pad, act)
    }

    fn conv_transpose2d(&self, x: &CudaTensor, weight: &CudaTensor, bias: Option<&CudaTensor>) -> Result<CudaTensor> {
        let (n, cin, h, w) = nchw(x, "conv_transpose2d input")?;
        let (wcin, cout, k, k2) = nchw(weight, "conv_transpose2d weight")?;
        ensure!(wcin == cin, "conv_transpose2d: input has {cin} channels, weight expects {wcin}");
        ensure!(
            k == 2 && k2 == 2,
            "conv_transpose2d: the CUDA kernel covers MONAI's 2x2 stride-2 deconv only, got {k}x{k2}"
        );
        let bias = self.vector_ptr(bias, cout, "conv_transpose2d bias")?;
        let y = self.alloc(&[n, cout, 2 * h, 2 * w])?;
        let (xp, wp, yp) = (self.ptr(&x.buf), self.ptr(&weight.buf), self.ptr(&y.buf));
        let dims = [
            i32_of(n, "batch")?,
            i32_of(cin, "channels")?,
            i32_of(cout, "channels")?,
            i32_of(h, "height")?,
            i32_of(w, "width")?,
        ];
        launch!(self, Kernel::ConvTranspose2x2, elementwise(y.buf.len()), [&xp, &wp, &bias, &yp], extra = &dims)?;
        Ok(y)
    }

    fn group_norm(
        &self,
        x: &mut CudaTensor,
        groups: usize,
        gamma: Option<&CudaTensor>,
        beta: Option<&CudaTensor>,
        eps: f32,
        act: Activation,
    ) -> Result<()> {
        let (n, c, len) = volume::batch_channels_plane(&x.shape, "group_norm")?;
        let per_group = volume::channels_per_group(c, groups)?;
        let (g, bt) = (self.vector_ptr(gamma, c, "group_norm weight")?, self.vector_ptr(beta, c, "group_norm bias")?);
        let (xp, channels, plane) = (self.ptr(&x.buf), i32_of(c, "channels")?, i32_of(len, "plane")?);
        let group = i32_of(per_group, "channels per group")?;
        let (act, slope) = act_code(act);
        let cfg = LaunchConfig { grid_dim: ((n * groups) as u32, 1, 1), block_dim: (512, 1, 1), shared_mem_bytes: 0 };
        launch!(self, Kernel::GroupNormAct, cfg, [&xp, &g, &bt, &channels, &group, &plane, &eps, &act, &slope])
    }

    fn activate(&self, x: &mut CudaTensor, act: Activation) -> Result<()> {
        if act == Activation::Identity {
            return Ok(());
        }
        let (xp, len) = (self.ptr(&x.buf), x.buf.len() as i64);
        let (act, slope) = act_code(act);
        launch!(self, Kernel::ActivateInplace, elementwise(x.buf.len()), [&xp, &len, &act, &slope])
    }

    fn max_pool2d(&self, x: &CudaTensor, k: usize) -> Result<CudaTensor> {
        let (n, c, h, w) = nchw(x, "max_pool2d")?;
        ensure!(k >= 1 && h >= k && w >= k, "max_pool2d: window {k} larger than input {h}x{w}");
        self.plane_op(Kernel::MaxPool2d, x, &[n, c, h / k, w / k], &[i32_of(k, "window")?])
    }

    fn upsample_bilinear2x(&self, x: &CudaTensor) -> Result<CudaTensor> {
        let (n, c, h, w) = nchw(x, "upsample_bilinear2x")?;
        self.plane_op(Kernel::UpsampleBilinear2x, x, &[n, c, 2 * h, 2 * w], &[])
    }

    fn pad_replicate_end(&self, x: &CudaTensor, ho: usize, wo: usize) -> Result<CudaTensor> {
        let (n, c, h, w) = nchw(x, "pad_replicate_end")?;
        ensure!(ho >= h && wo >= w && h > 0 && w > 0, "pad_replicate_end: cannot pad {h}x{w} to {ho}x{wo}");
        self.plane_op(Kernel::PadReplicateEnd, x, &[n, c, ho, wo], &[i32_of(ho, "height")?, i32_of(wo, "width")?])
    }

    fn concat_channels(&self, a: &CudaTensor, b: &CudaTensor) -> Result<CudaTensor> {
        let (n, ca, len) = volume::batch_channels_plane(&a.shape, "concat_channels")?;
        let (_, cb, _) = volume::batch_channels_plane(&b.shape, "concat_channels")?;
        ensure!(
            a.shape[0] == b.shape[0] && a.shape[2..] == b.shape[2..],
            "concat_channels: shapes {:?} and {:?} differ outside channels",
            a.shape,
            b.shape
        );
        let mut shape = a.shape.clone();
        shape[1] = ca + cb;
        let y = self.alloc(&shape)?;
        let (ap, bp, yp) = (self.ptr(&a.buf), self.ptr(&b.buf), self.ptr(&y.buf));
        let (ni, cai, cbi, plane) = (i32_of(n, "batch")?, i32_of(ca, "channels")?, i32_of(cb, "channels")?, len as i64);
        launch!(self, Kernel::ConcatChannels, elementwise(y.buf.len()), [&ap, &bp, &yp, &ni, &cai, &cbi, &plane])?;
        Ok(y)
    }

    fn softmax_channels(&self, x: &mut CudaTensor) -> Result<()> {
        let (n, c, len) = volume::batch_channels_plane(&x.shape, "softmax_channels")?;
        let (xp, ni, ci, plane) = (self.ptr(&x.buf), i32_of(n, "batch")?, i32_of(c, "channels")?, len as i64);
        launch!(self, Kernel::SoftmaxChannels, elementwise(n * len), [&xp, &ni, &ci, &plane])
    }

    fn conv3d(
        &self,
        x: &CudaTensor,
        weight: &CudaTensor,
        bias: Option<&CudaTensor>,
        stride: [usize; 3],
        pad: [usize; 3],
    ) -> Result<CudaTensor> {
        let g = volume::Conv3d::new(&x.shape, &weight.shape, stride, pad)?;
        let bias = self.vector_ptr(bias, g.cout, "conv3d bias")?;
        let y = self.alloc(&g.output_shape())?;
        let values = [
            g.n,
            g.cin,
            g.input[0],
            g.input[1],
            g.input[2],
            g.cout,
            g.kernel[0],
            g.kernel[1],
            g.kernel[2],
            g.stride[0],
            g.stride[1],
            g.stride[2],
            g.pad[0],
            g.pad[1],
            g.pad[2],
            g.output[0],
            g.output[1],
            g.output[2],
        ];
        let mut dims = [0i32; 18];
        for (d, &v) in dims.iter_mut().zip(&values) {
            *d = i32_of(v, "conv3d dimension")?;
        }
        let args = Conv3dArgs { x: self.ptr(&x.buf), weight: self.ptr(&weight.buf), bias, y: self.ptr(&y.buf), dims };
        // f32 only: the 3-D path has no tensor-core variant yet, whatever --precision says.
        let (kernel, bm, bn) =
            if g.cout <= 16 { (Kernel::Conv3dF32M16, 16, 256) } else { (Kernel::Conv3dF32M64, 64, 64) };
        let voxels = g.n * g.output.iter().product::<usize>();
        let cfg = LaunchConfig {
            grid_dim: (voxels.div_ceil(bn) as u32, g.cout.div_ceil(bm) as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        launch!(self, kernel, cfg, [&args])?;
        Ok(y)
    }

    fn conv_transpose3d(
        &self,
        x: &CudaTensor,
        weight: &CudaTensor,
        bias: Option<&CudaTensor>,
        at: volume::Transposed,
    ) -> Result<CudaTensor> {
        let g = volume::ConvTranspose3d::new(&x.shape, &weight.shape, at)?;
        let bias = self.vector_ptr(bias, g.cout, "conv_transpose3d bias")?;
        let y = self.alloc(&g.output_shape())?;
        let (xp, wp, yp) = (self.ptr(&x.buf), self.ptr(&weight.buf), self.ptr(&y.buf));
        let sizes = [g.n, g.cin, g.cout].into_iter().chain(g.input).chain(g.kernel).chain(at.stride).chain(at.pad);
        let mut dims = [0i32; 18];
        for (slot, v) in dims.iter_mut().zip(sizes.chain(g.output)) {
            *slot = i32_of(v, "conv_transpose3d dimension")?;
        }
        launch!(self, Kernel::ConvTranspose3d, elementwise(y.buf.len()), [&xp, &wp, &bias, &yp], extra = &dims)?;
        Ok(y)
    }

    fn max_pool3d(&self, x: &CudaTensor, k: [usize; 3]) -> Result<CudaTensor> {
        let (n, c, _, out) = volume::max_pool3d(&x.shape, k)?;
        let window = [i32_of(k[0], "window")?, i32_of(k[1], "window")?, i32_of(k[2], "window")?];
        self.volume_op(Kernel::MaxPool3d, x, &[n, c, out[0], out[1], out[2]], &window)
    }

    fn upsample_trilinear(&self, x: &CudaTensor, size: [usize; 3], align_corners: bool) -> Result<CudaTensor> {
        let (n, c, _) = volume::resize3d(&x.shape, size, "upsample_trilinear")?;
        let extra =
            [i32_of(size[0], "depth")?, i32_of(size[1], "height")?, i32_of(size[2], "width")?, align_corners as i32];
        self.volume_op(Kernel::UpsampleTrilinear, x, &[n, c, size[0], size[1], size[2]], &extra)
    }

    fn pad_replicate_end3d(&self, x: &CudaTensor, size: [usize; 3]) -> Result<CudaTensor> {
        let (n, c, input) = volume::ncdhw(&x.shape, "pad_replicate_end3d")?;
        ensure!(
            (0..3).all(|a| size[a] >= input[a]) && input.iter().all(|&v| v > 0),
            "pad_replicate_end3d: cannot pad {input:?} to {size:?}"
        );
        let extra = [i32_of(size[0], "depth")?, i32_of(size[1], "height")?, i32_of(size[2], "width")?];
        self.volume_op(Kernel::PadReplicateEnd3d, x, &[n, c, size[0], size[1], size[2]], &extra)
    }

    fn flip3d(&self, x: &CudaTensor, axes: [bool; 3]) -> Result<CudaTensor> {
        let extra = axes.map(i32::from);
        self.volume_op(Kernel::Flip3d, x, &x.shape, &extra)
    }

    fn linear(&self, x: &CudaTensor, weight: &CudaTensor, bias: Option<&CudaTensor>) -> Result<CudaTensor> {
        let [out_f, in_f] = weight.shape[..] else { bail!("linear: weight must be (out, in), got {:?}", weight.shape) };
        let last = *x.shape.last().unwrap_or(&0);
        ensure!(last == in_f, "linear: input's last axis is {last}, weight expects {in_f}");
        let bias = self.vector_ptr(bias, out_f, "linear bias")?;
        let rows = x.buf.len() / in_f.max(1);
        let mut shape = x.shape.clone();
        *shape.last_mut().expect("non-empty shape") = out_f;
        let y = self.alloc(&shape)?;
        let (xp, wp, yp) = (self.ptr(&x.buf), self.ptr(&weight.buf), self.ptr(&y.buf));
        let (m, n, k) = (i32_of(rows, "rows")?, i32_of(out_f, "features")?, i32_of(in_f, "features")?);
        let cfg = LaunchConfig {
            grid_dim: (out_f.div_ceil(64) as u32, rows.div_ceil(64) as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        launch!(self, Kernel::LinearF32, cfg, [&xp, &wp, &bias, &yp, &m, &n, &k])?;
        Ok(y)
    }

    fn layer_norm(&self, x: &CudaTensor, gamma: &CudaTensor, beta: &CudaTensor, eps: f32) -> Result<CudaTensor> {
        let d = *x.shape.last().unwrap_or(&0);
        ensure!(d > 0 && gamma.buf.len() == d && beta.buf.len() == d, "layer_norm: weight/bias must have {d} values");
        let rows = x.buf.len() / d;
        let y = self.alloc(&x.shape)?;
        let (xp, gp, bp, yp) = (self.ptr(&x.buf), self.ptr(&gamma.buf), self.ptr(&beta.buf), self.ptr(&y.buf));
        let (rows_i, len) = (rows as i64, i32_of(d, "features")?);
        let cfg =
            LaunchConfig { grid_dim: (rows.div_ceil(8) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        launch!(self, Kernel::LayerNormRows, cfg, [&xp, &gp, &bp, &yp, &rows_i, &len, &eps])?;
        Ok(y)
    }

    fn softmax_last(&self, x: &mut CudaTensor) -> Result<()> {
        let d = *x.shape.last().unwrap_or(&0);
        ensure!(d > 0, "softmax_last: empty last axis");
        let rows = x.buf.len() / d;
        let (xp, rows_i, len) = (self.ptr(&x.buf), rows as i64, i32_of(d, "features")?);
        let cfg =
            LaunchConfig { grid_dim: (rows.div_ceil(8) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        launch!(self, Kernel::SoftmaxRows, cfg, [&xp, &rows_i, &len])
    }

    fn attention(
        &self,
        q: &CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
        heads: usize,
        causal: bool,
    ) -> Result<CudaTensor> {
        let [b, len, width] = q.shape[..] else { bail!("attention: q must be (B, L, D), got {:?}", q.shape) };
        ensure!(
            k.shape == q.shape && v.shape == q.shape,
            "attention: the CUDA kernel takes self-attention, q {:?} k {:?} v {:?}",
            q.shape,
            k.shape,
            v.shape
        );
        ensure!(heads >= 1 && width % heads == 0, "attention: width {width} does not split into {heads} heads");
        let d = width / heads;
        ensure!(d <= 128, "attention: head size {d} exceeds the kernel's 128");
        let y = self.alloc(&q.shape)?;
        let (qp, kp, vp, yp) = (self.ptr(&q.buf), self.ptr(&k.buf), self.ptr(&v.buf), self.ptr(&y.buf));
        let dims = [
            i32_of(b, "batch")?,
            i32_of(len, "length")?,
            i32_of(heads, "heads")?,
            i32_of(d, "head size")?,
            causal as i32,
        ];
        let cfg = LaunchConfig {
            grid_dim: ((b * heads * len.div_ceil(4)) as u32, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        launch!(self, Kernel::AttentionF32, cfg, [&qp, &kp, &vp, &yp], extra = &dims)?;
        Ok(y)
    }

    fn add(&self, a: &mut CudaTensor, b: &CudaTensor) -> Result<()> {
        ensure!(a.shape == b.shape, "add: shapes {:?} and {:?} differ", a.shape, b.shape);
        let (ap, bp, len) = (self.ptr(&a.buf), self.ptr(&b.buf), a.buf.len() as i64);
        launch!(self, Kernel::AddInplace, elementwise(a.buf.len()), [&ap, &bp, &len])
    }

    fn perturb(
        &self,
        scene: &Scene<CudaTensor>,
        masks: &MaskBatch,
        first: usize,
        n: usize,
    ) -> Result<(CudaTensor, CudaTensor)> {
        let size = scene.size;
        let plane = size * size;
        ensure!(
            scene.input.buf.len() == plane && scene.baseline.buf.len() == plane && scene.roi.buf.len() == plane,
            "perturb: scene planes must be {size}x{size}"
        );
        let (mask_t, images) = (self.alloc(&[n, 1, size, size])?, self.alloc(&[n, 1, size, size])?);
        let args = PerturbArgs {
            input: self.ptr(&scene.input.buf),
            baseline: self.ptr(&scene.baseline.buf),
            roi: self.ptr(&scene.roi.buf),
            masks: self.ptr(&mask_t.buf),
            images: self.ptr(&images.buf),
            n: i32_of(n, "batch")?,
            size: i32_of(size, "size")?,
        };
        match *masks {
            MaskBatch::Rise { masks: rise, first: offset } => {
                ensure!(rise.grid <= 64, "RISE grid {} exceeds the kernel's 64", rise.grid);
                let (seed, start, s) = (rise.seed, (offset + first) as u64, rise.grid as i32);
                let cfg = LaunchConfig {
                    grid_dim: (size.div_ceil(16) as u32, n as u32, 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                };
                launch!(self, Kernel::RiseMasks, cfg, [&args, &seed, &start, &s, &rise.p1])?;
            }
            MaskBatch::Windows { origins, window } => {
                let picked = origins.get(first..first + n).context("window index out of range")?;
                let flat: Vec<i32> = picked.iter().flat_map(|&(y, x)| [y as i32, x as i32]).collect();
                let dev = driver(self.stream.clone_htod(&flat), "upload")?;
                let (op, win) = (dev.device_ptr(&self.stream).0, i32_of(window, "window")?);
                // Dropping `dev` after the launch is safe: cudarc frees stream-ordered (or synchronises first).
                launch!(self, Kernel::WindowMasks, elementwise(n * plane), [&args, &op, &win])?;
            }
            MaskBatch::Coalitions { rows, .. } => {
                let labels = scene.labels.as_ref().context("coalition masks need the superpixel map in the scene")?;
                let picked = rows.get(first..first + n).context("coalition index out of range")?;
                let count = picked.first().map_or(0, Vec::len);
                let flat: Vec<f32> = picked.iter().flat_map(|r| r.iter().map(|&b| b as u8 as f32)).collect();
                let dev = driver(self.stream.clone_htod(&flat), "upload")?;
                let (lp, op, cnt) =
                    (self.ptr(&labels.buf), dev.device_ptr(&self.stream).0, i32_of(count, "superpixels")?);
                launch!(self, Kernel::CoalitionMasks, elementwise(n * plane), [&args, &lp, &op, &cnt])?;
            }
        }
        Ok((mask_t, images))
    }

    fn segmentation_scores(
        &self,
        logits: &CudaTensor,
        m0: &CudaTensor,
        class: usize,
        kind: ScoreKind,
    ) -> Result<CudaTensor> {
        let (n, classes, h, w) = nchw(logits, "segmentation_scores")?;
        ensure!(m0.buf.len() == h * w, "segmentation_scores: M0 has {} pixels, logits {}", m0.buf.len(), h * w);
        ensure!(class < classes, "segmentation_scores: class {class} of {classes}");
        let scores = self.alloc(&[n])?;
        let (lp, mp, sp) = (self.ptr(&logits.buf), self.ptr(&m0.buf), self.ptr(&scores.buf));
        let kind = match kind {
            ScoreKind::MeanProb => 0i32,
            ScoreKind::LogitSum => 1,
            ScoreKind::SoftDice => 2,
            ScoreKind::Dice => 3,
        };
        let (ci, plane, cls) = (i32_of(classes, "classes")?, i32_of(h * w, "plane")?, class as i32);
        let cfg = LaunchConfig { grid_dim: (n as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        launch!(self, Kernel::SegmentationScores, cfg, [&lp, &mp, &sp, &ci, &plane, &cls, &kind])?;
        Ok(scores)
    }

    fn accumulate_weighted(&self, acc: &mut CudaTensor, weights: &CudaTensor, masks: &CudaTensor) -> Result<()> {
        let n = weights.buf.len();
        ensure!(
            n > 0 && masks.buf.len().is_multiple_of(n),
            "accumulate_weighted: {} mask values for {n} weights",
            masks.buf.len()
        );
        let plane = masks.buf.len() / n;
        ensure!(acc.buf.len() == 2 * plane, "accumulate_weighted: accumulator must be (2, {plane})");
        let (ap, wp, mp, ni, pl) = (
            self.ptr(&acc.buf),
            self.ptr(&weights.buf),
            self.ptr(&masks.buf),
            i32_of(n, "batch")?,
            i32_of(plane, "plane")?,
        );
        launch!(self, Kernel::AccumulateWeighted, elementwise(plane), [&ap, &wp, &mp, &ni, &pl])
    }
}

/// One kernel's resources from ptxas's report (nvcc -Xptxas -v).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct KernelResources {
    /// Kernel function name.
    pub name: String,
    /// Registers per thread.
    pub registers: u32,
    /// Static shared memory per block, bytes.
    pub shared_bytes: u32,
    /// Stack frame, bytes.
    pub stack_bytes: u32,
    /// Bytes spilled to local memory (stores).
    pub spill_stores: u32,
    /// Bytes spilled to local memory (loads).
    pub spill_loads: u32,
}

/// Parses ptxas's "Function properties for K" / "N bytes stack frame, N bytes spill stores, N bytes
/// spill loads" / "Used N registers, ..., N bytes smem" lines.
pub fn ptxas_resources(report: &str) -> Vec<KernelResources> {
    let number_before = |line: &str, unit: &str| -> u32 {
        line.split(',')
            .find(|part| part.trim_end().ends_with(unit))
            .and_then(|part| part.split_whitespace().rev().nth(unit.split_whitespace().count())?.parse().ok())
            .unwrap_or(0)
    };
    let mut out: Vec<KernelResources> = Vec::new();
    for line in report.lines() {
        if let Some(name) = line.split("Function properties for ").nth(1) {
            out.push(KernelResources { name: name.trim().to_string(), ..Default::default() });
        } else if let Some(k) = out.last_mut() {
            if line.contains("bytes stack frame") {
                k.stack_bytes = number_before(line, "bytes stack frame");
                k.spill_stores = number_before(line, "bytes spill stores");
                k.spill_loads = number_before(line, "bytes spill loads");
            } else if line.contains("Used ") && line.contains("registers") {
                k.registers =
                    line.split("Used ").nth(1).and_then(|r| r.split_whitespace().next()?.parse().ok()).unwrap_or(0);
                k.shared_bytes = number_before(line, "bytes smem");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ptxas_report_lines() {
        let report = "ptxas info    : Compiling entry function 'k1' for 'sm_90'\nptxas info    : Function properties for k1\n    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\nptxas info    : Used 96 registers, used 1 barriers, 22784 bytes smem\nptxas info    : Function properties for k2\n    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\nptxas info    : Used 30 registers, used 0 barriers\n";
        let r = ptxas_resources(report);
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0],
            KernelResources {
                name: "k1".into(),
                registers: 96,
                shared_bytes: 22784,
                stack_bytes: 8,
                spill_stores: 4,
                spill_loads: 12
            }
        );
        assert_eq!((r[1].registers, r[1].shared_bytes, r[1].spill_stores), (30, 0, 0));
    }
}
