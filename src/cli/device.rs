//! `--device auto|cpu|cuda[:N]` and `--precision`: which backend a command runs on.

use crate::backend::cuda::{Precision, BUILD_STATUS, MODULES};
use crate::backend::{CpuBackend, CudaBackend};
use anyhow::{bail, Context, Result};
use std::io::IsTerminal;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The first GPU when one can be used, else the CPU.
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceChoice {
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

#[derive(clap::Args, Debug, Clone)]
pub struct DeviceArgs {
    /// Where to compute: auto (a GPU when one is usable, else the CPU), cpu, cuda or cuda:N.
    #[arg(long, global = true, default_value = "auto")]
    pub device: DeviceChoice,
    /// Operand precision of GPU convolutions (accumulation is f32): f32 matches the CPU to ~1e-6;
    /// tf32 and bf16 use the tensor cores (~1e-3 and ~1e-2 relative).
    #[arg(long, global = true, value_enum, default_value_t = Precision::F32)]
    pub precision: Precision,
}

/// The backend a command runs on.
pub enum Compute {
    Cpu(CpuBackend),
    Cuda(Box<CudaBackend>),
}

impl DeviceArgs {
    pub fn select(&self) -> Result<Compute> {
        match self.device {
            DeviceChoice::Cpu => Ok(Compute::Cpu(CpuBackend)),
            DeviceChoice::Cuda(n) => {
                Ok(Compute::Cuda(Box::new(CudaBackend::new(n, self.precision).context("--device cuda")?)))
            }
            DeviceChoice::Auto => match CudaBackend::new(0, self.precision) {
                Ok(b) => Ok(Compute::Cuda(Box::new(b))),
                Err(e) => {
                    // A binary without kernels says how to get them, once, where a person reads it; a
                    // machine with a driver whose GPU could not be used says why; one without a driver
                    // is the plain CPU case and says nothing.
                    // Safety: only probes whether libcuda can be loaded.
                    if MODULES.is_empty() {
                        if std::io::stderr().is_terminal() {
                            eprintln!("note: CPU only ({BUILD_STATUS})");
                        }
                    } else if unsafe { cudarc::driver::sys::is_culib_present() } {
                        eprintln!("warning: using the CPU: {e:#}");
                    }
                    Ok(Compute::Cpu(CpuBackend))
                }
            },
        }
    }
}

/// Runs `$body` with `$b` bound to the selected backend (the body is compiled once per backend type).
#[macro_export]
macro_rules! on_backend {
    ($compute:expr, |$b:ident| $body:expr) => {
        match &$compute {
            $crate::cli::device::Compute::Cpu(cpu) => {
                let $b = cpu;
                $body
            }
            $crate::cli::device::Compute::Cuda(cuda) => {
                let $b: &$crate::backend::CudaBackend = cuda;
                $body
            }
        }
    };
}
