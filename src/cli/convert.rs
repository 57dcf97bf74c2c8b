//! `xaiclip convert`: an image to NIfTI, geometry kept.

use anyhow::Result;
use std::path::PathBuf;
use xaiclip::io;

#[derive(clap::Args, Debug)]
pub struct ConvertCmd {
    /// Input image: NIfTI file or DICOM series folder.
    #[arg(long)]
    pub image: PathBuf,
    /// Output .nii or .nii.gz.
    #[arg(long)]
    pub out: PathBuf,
}

/// Converts the image.
pub fn run(cmd: ConvertCmd) -> Result<()> {
    // Refused before any work: the name decides the format.
    io::nifti::output_suffix(&cmd.out)?;
    let v = io::read_image(&cmd.image)?;
    if v.data.iter().all(|x| x.fract() == 0.0 && (i16::MIN as f32..=i16::MAX as f32).contains(x)) {
        io::nifti::write_like(&cmd.out, &v, &v.data.iter().map(|&x| x as i16).collect::<Vec<_>>())?;
    } else {
        io::nifti::write_like(&cmd.out, &v, &v.data)?;
    }
    eprintln!(
        "wrote {} ({} x {} x {}, orientation {})",
        cmd.out.display(),
        v.dims[0],
        v.dims[1],
        v.dims[2],
        v.orientation()
    );
    Ok(())
}
