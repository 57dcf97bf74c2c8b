//! `xaiclip profile`: a model's forward pass timed layer by layer.

use super::{DeviceArgs, Progress};
use anyhow::Result;
use std::path::PathBuf;
use xaiclip::io::{check_output_file, write_text};

#[derive(clap::Args, Debug)]
pub struct ProfileCmd {
    /// Model folder (any 2-D model explain takes: BasicUNet, MONAI bundle, nnU-Net result folder);
    /// default: the bundled weights/unet.
    #[arg(long, visible_alias = "unet")]
    pub model: Option<PathBuf>,
    /// Square input sides, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "128,256")]
    pub sizes: Vec<usize>,
    /// Images per forward, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    pub batches: Vec<usize>,
    /// Timed forwards per size and batch (after one warm-up); the medians are reported (the forward's, and
    /// each operation's over the forwards).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Rows of the per-layer table (the slowest operations first).
    #[arg(long, default_value_t = 12)]
    pub top: usize,
    /// Write every size, batch and operation as JSON here (what benches/peers/forward.py reads).
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub device: super::DeviceOptions,
}

pub fn run(device: &DeviceArgs, cmd: ProfileCmd) -> Result<()> {
    if let Some(p) = &cmd.json {
        check_output_file(p)?;
    }
    if let Some(bad) = cmd.sizes.iter().chain(&cmd.batches).find(|&&v| v == 0) {
        anyhow::bail!("--sizes and --batches must be positive, got {bad}");
    }
    let bar = Progress::new(0, "forwards");
    let result = xaiclip::bench::profile_forward(
        device.device,
        device.precision,
        cmd.model.as_deref(),
        &cmd.sizes,
        &cmd.batches,
        cmd.repeat,
        |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    );
    bar.finish_and_clear();
    let (model, profiles) = result?;
    let cpu = xaiclip::backend::cpu::describe_cpu();
    println!("model: {model}\ndevice: {device:?}\ncpu: {cpu}", device = device.device);
    for p in &profiles {
        println!(
            "\nsize {0}x{0}, batch {1}: {2:.1} ms median of {3} ({4:.2} GFLOP per forward, {5:.1} GFLOP/s)",
            p.size,
            p.batch,
            1e3 * p.median_seconds,
            p.seconds.len(),
            p.flops / 1e9,
            p.flops / p.median_seconds / 1e9
        );
        let mut ops = p.ops.clone();
        ops.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        let layers: f64 = ops.iter().map(|o| o.seconds).sum();
        println!("| operation | shapes | calls | ms | share | GFLOP/s |\n|---|---|---:|---:|---:|---:|");
        for o in ops.iter().take(cmd.top) {
            let rate = if o.flops > 0.0 { format!("{:.1}", o.flops / o.seconds / 1e9) } else { "".into() };
            println!(
                "| {} | {} | {} | {:.2} | {:.1}% | {rate} |",
                o.op,
                o.shapes,
                o.calls,
                1e3 * o.seconds,
                100.0 * o.seconds / layers
            );
        }
        if ops.len() > cmd.top {
            let rest: f64 = ops[cmd.top..].iter().map(|o| o.seconds).sum();
            println!("| {} more | | | {:.2} | {:.1}% | |", ops.len() - cmd.top, 1e3 * rest, 100.0 * rest / layers);
        }
    }
    if let Some(path) = &cmd.json {
        let json = serde_json::json!({
            "model": model, "cpu": cpu, "device": format!("{:?}", device.device),
            "provenance": super::provenance(), "profiles": profiles,
        });
        write_text(path, serde_json::to_string_pretty(&json)?)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
