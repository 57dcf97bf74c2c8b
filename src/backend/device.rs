//! Which backend the engine runs on: a device choice (`auto`, `cpu`, `cuda`, `cuda:N`) resolved into a
//! `Compute`, and `on_backend!` to run generic code on whichever was chosen.

use super::cuda::{Precision, BUILD_STATUS, MODULES};
use super::{CpuBackend, CudaBackend};
use crate::fail;
use anyhow::{bail, Context, Result};
use std::io::IsTerminal;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
/// Where to compute (`--device`).
pub enum Device {
    /// The first GPU when one can be used, else the CPU.
    Auto,
    /// The CPU backend.
    Cpu,
    /// CUDA device N.
    Cuda(usize),
}

impl FromStr for Device {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            other => match other.strip_prefix("cuda:") {
                Some(n) => Ok(Self::Cuda(
                    n.parse().with_context(|| format!("--device {s:?}: expected cuda:N with N a GPU index"))?,
                )),
                None => bail!("--device {s:?}: expected auto, cpu, cuda or cuda:N"),
            },
        }
    }
}

/// The backend a command runs on.
pub enum Compute {
    /// The CPU backend.
    Cpu(CpuBackend),
    /// A CUDA device.
    Cuda(Box<CudaBackend>),
}

impl Device {
    /// Opens the chosen backend; `Auto` falls back to the CPU (saying why where it matters).
    pub fn select(self, precision: Precision) -> Result<Compute> {
        match self {
            Device::Cpu => Ok(Compute::Cpu(cpu(precision)?)),
            Device::Cuda(n) => match CudaBackend::new(n, precision) {
                Ok(b) => Ok(Compute::Cuda(Box::new(b))),
                Err(e) => fail!(DeviceUnavailable, "--device cuda: {e:#}"),
            },
            Device::Auto => match CudaBackend::new(0, precision) {
                Ok(b) => Ok(Compute::Cuda(Box::new(b))),
                Err(e) => {
                    // A binary without kernels says how to get them, once, where a person reads it; a
                    // machine with a driver whose GPU could not be used says why; one without a driver
                    // is the plain CPU case and says nothing.
                    if MODULES.is_empty() {
                        if std::io::stderr().is_terminal() {
                            eprintln!("note: CPU only ({BUILD_STATUS})");
                        }
                    // SAFETY: only probes whether libcuda can be loaded.
                    } else if unsafe { cudarc::driver::sys::is_culib_present() } {
                        eprintln!("warning: using the CPU: {e:#}");
                    }
                    Ok(Compute::Cpu(cpu(precision)?))
                }
            },
        }
    }
}

/// The CPU backend for `precision`: bf16 where the CPU has AVX512-BF16 (refused elsewhere rather than
/// silently run in f32); tf32 computes in f32 with Winograd F(4x4, 3x3) (the CPU has no tf32 operands).
fn cpu(precision: Precision) -> Result<CpuBackend> {
    match precision {
        Precision::Bf16 => match CpuBackend::bf16() {
            Some(b) => Ok(b),
            None => fail!(
                Unsupported,
                "--precision bf16 on the CPU needs AVX512-BF16 (vdpbf16ps), which this CPU lacks (or XAICLIP_CPU_CAPABILITY caps); use --precision f32"
            ),
        },
        Precision::Tf32 => Ok(CpuBackend::tf32()),
        Precision::F32 => Ok(CpuBackend),
    }
}

/// Runs `$body` with `$b` bound to the selected backend (the body is compiled once per backend type).
#[macro_export]
macro_rules! on_backend {
    ($compute:expr, |$b:ident| $body:expr) => {
        match &$compute {
            $crate::backend::device::Compute::Cpu(cpu) => {
                let $b = cpu;
                $body
            }
            $crate::backend::device::Compute::Cuda(cuda) => {
                let $b: &$crate::backend::CudaBackend = cuda;
                $body
            }
        }
    };
}
