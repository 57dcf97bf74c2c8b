//! Embedding xaiclip: occlusion in the CLIP ROI of the liver on one slice, with the bundled models.
//! `cargo run --release --example embed -- ct.nii.gz 16` prints what `xaiclip explain --image ct.nii.gz
//! --slice 16 --method occlusion --roi clip` reports.

use xaiclip::{Explainer, Method, Request, RoiMode};

fn main() -> xaiclip::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (image, slice) = (&args[1], args[2].parse().expect("slice index"));
    let volume = xaiclip::read_volume(image)?;
    let explainer = Explainer::builder().build()?;
    let request = Request::new("liver", Method::Occlusion).roi(RoiMode::Clip).slice(slice);
    let explanation = explainer.explain(&volume, &request)?;
    let run = &explanation.run;
    println!("forward_passes {} roi_fraction {:.6}", run.forward_passes, run.roi_fraction());
    Ok(())
}
