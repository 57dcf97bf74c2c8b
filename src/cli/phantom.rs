//! `xaiclip phantom`: a synthetic CT or MR with labels, or a synthetic data set tree.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use xaiclip::{io, phantom};

#[derive(clap::Args, Debug)]
pub struct PhantomCmd {
    /// Random seed: anatomy variation, blur and noise all follow from it.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Output folder (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Pixels per side of each axial slice.
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Number of axial slices.
    #[arg(long, default_value_t = 32)]
    pub slices: usize,
    /// Write a data set tree in this layout instead of one volume.
    #[arg(long, value_enum)]
    pub layout: Option<xaiclip::dataset::DatasetKind>,
    /// Cases in the data set tree (seeds seed, seed+1, ...).
    #[arg(long, default_value_t = 3, requires = "layout")]
    pub cases: usize,
    /// MR instead of CT: the same anatomy (same labels) in this CHAOS sequence's contrast, written as
    /// mr_<sequence>.nii.gz (t1-in-phase, t1-opposed-phase, t2-spir; `--slices 20` gives CHAOS's 8 mm).
    #[arg(long, value_enum, conflicts_with = "layout")]
    pub mr: Option<phantom::Sequence>,
}

/// Writes the phantom (or the data set tree).
pub fn run(cmd: PhantomCmd) -> Result<()> {
    let PhantomCmd { seed, out, size, slices, layout, cases, mr } = cmd;
    if !(32..=1024).contains(&size) || !(1..=512).contains(&slices) {
        bail!("phantom size must be 32 to 1024 pixels and slices 1 to 512 (got {size} and {slices})");
    }
    if let Some(kind) = layout {
        xaiclip::dataset::write_synthetic(kind, &out, seed, cases, size, slices)?;
        eprintln!("wrote a {kind:?} data set of {cases} cases in {}", out.display());
        return Ok(());
    }
    std::fs::create_dir_all(&out).with_context(|| format!("{}: cannot create folder", out.display()))?;
    let (p, name) = match mr {
        Some(sequence) => {
            (phantom::generate_mr(seed, size, slices, sequence), format!("mr_{}.nii.gz", sequence.name()))
        }
        None => (phantom::generate(seed, size, slices), "ct.nii.gz".to_string()),
    };
    let values: Vec<i16> = p.image.data.iter().map(|&v| v as i16).collect();
    io::nifti::write_like(&out.join(&name), &p.image, &values)?;
    io::nifti::write_like(&out.join("labels.nii.gz"), &p.image, &p.labels)?;
    eprintln!("wrote {} and {}", out.join(&name).display(), out.join("labels.nii.gz").display());
    Ok(())
}
