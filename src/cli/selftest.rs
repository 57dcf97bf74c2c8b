//! `xaiclip selftest`: every kernel against its twin on fresh random inputs, then timings.

use super::{DeviceArgs, Progress};
use anyhow::{bail, Result};
use serde_json::json;
use std::path::PathBuf;
use xaiclip::backend::{Backend, Compute};
use xaiclip::io::write_text;

#[derive(clap::Args, Debug)]
pub struct SelftestCmd {
    /// Also write every row (and ptxas's register/spill report on a GPU) as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Seed of the random inputs (default: from the clock, so each run draws fresh inputs; printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// RISE masks of the timed explanations (LIME/SHAP use a quarter); default 4000 on a GPU, 200 on
    /// the CPU.
    #[arg(long)]
    pub samples: Option<usize>,
    /// Images per forward batch in the timed explanations; default 256 on a GPU, 16 on the CPU.
    #[arg(long)]
    pub batch: Option<usize>,
    /// Kernels only: skip the end-to-end explanations.
    #[arg(long)]
    pub kernels_only: bool,
    /// Small shapes and one timed run per kernel; explanations by a small random U-Net on a 32x32 grid
    /// with 16 samples, compared with the CPU (for slow devices, such as the tests' kernel emulator).
    #[arg(long)]
    pub quick: bool,
    #[command(flatten)]
    pub device: super::DeviceOptions,
}

/// Checks every kernel against its reference, then times kernels and explanations.
pub fn run(device: &DeviceArgs, cmd: SelftestCmd) -> Result<()> {
    use xaiclip::selftest::{check_explainers, check_kernels, explain_table, table, Ceilings};
    if let Some(p) = &cmd.json {
        xaiclip::io::check_output_file(p)?;
    }
    let seed = cmd.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    let compute = device.device.select(device.precision)?;
    let (ceilings, gpu) = match &compute {
        Compute::Cpu(_) => (xaiclip::selftest::cpu_ceilings(), false),
        Compute::Cuda(g) => {
            g.set_poison(true);
            let matrix = match g.precision() {
                xaiclip::backend::cuda::Precision::F32 => 67e12,
                xaiclip::backend::cuda::Precision::Tf32 => 495e12,
                xaiclip::backend::cuda::Precision::Bf16 => 788e12,
            };
            (Ceilings { flops: 67e12, conv_flops: matrix, bytes_per_s: g.copy_bandwidth()? }, true)
        }
    };
    let resources =
        if gpu { xaiclip::backend::cuda::ptxas_resources(xaiclip::backend::cuda::PTXAS_REPORT) } else { Vec::new() };
    let name = xaiclip::on_backend!(compute, |b| b.name());
    println!(
        "selftest on {name}, seed {seed}; ceilings {:.2} TFLOP/s f32, {:.2} TFLOP/s convolutions, {:.0} GB/s copy",
        ceilings.flops * 1e-12,
        ceilings.conv_flops * 1e-12,
        ceilings.bytes_per_s * 1e-9
    );
    if gpu {
        println!("\n| kernel | registers | shared memory | stack | spill stores | spill loads |\n|---|---:|---:|---:|---:|---:|");
        for k in &resources {
            println!(
                "| {} | {} | {} B | {} B | {} B | {} B |",
                k.name, k.registers, k.shared_bytes, k.stack_bytes, k.spill_stores, k.spill_loads
            );
        }
    }
    let bar = Progress::new(0, "kernels");
    let kernels =
        xaiclip::on_backend!(compute, |b| check_kernels(b, gpu, device.precision, ceilings, seed, cmd.quick, |_| bar
            .inc(1)))?;
    bar.finish_and_clear();
    println!("\n{}", table(&kernels));
    let mut explain = Vec::new();
    if !cmd.kernels_only {
        let bar = Progress::new(0, "explanations");
        if cmd.quick {
            explain.extend(xaiclip::on_backend!(compute, |b| check_explainers(b, gpu, true, 16, 8, |_| bar.inc(1)))?);
        } else {
            let samples = cmd.samples.unwrap_or(if gpu { 4000 } else { 200 });
            let batch = cmd.batch.unwrap_or(if gpu { 256 } else { 16 });
            if gpu {
                // Same settings on both sides, small enough for the CPU.
                explain.extend(
                    xaiclip::on_backend!(compute, |b| check_explainers(b, true, false, 64, 16, |_| bar.inc(1)))?
                );
            }
            explain.extend(xaiclip::on_backend!(compute, |b| check_explainers(
                b,
                false,
                false,
                samples,
                batch,
                |_| { bar.inc(1) }
            ))?);
        }
        bar.finish_and_clear();
        println!("{}", explain_table(&explain));
    }
    if let Some(path) = &cmd.json {
        let report = json!({"device": name, "precision": device.precision, "seed": seed, "ceilings": ceilings, "ptxas": resources, "kernels": kernels, "explain": explain});
        write_text(path, serde_json::to_string_pretty(&report)?)?;
    }
    let failed: Vec<String> = kernels
        .iter()
        .filter(|r| !r.passed)
        .map(|r| format!("{} {}", r.kernel, r.shape))
        .chain(explain.iter().filter(|r| !r.passed).map(|r| format!("{} end to end", r.method)))
        .collect();
    if !failed.is_empty() {
        bail!("{} of {} checks failed: {}", failed.len(), kernels.len() + explain.len(), failed.join(", "));
    }
    println!("all {} checks passed", kernels.len() + explain.len());
    Ok(())
}
