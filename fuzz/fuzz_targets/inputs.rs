//! How each fuzz target turns its input bytes into files and calls xaiclip. Shared by the targets and
//! tests/fuzz_regressions.rs, so a saved crasher replays exactly as it was found. Ok results are checked
//! for consistency; errors come back as their message.

use std::path::Path;
use xaiclip::backend::CpuBackend;
use xaiclip::dataset::{read_png_mask, PngEncoding};

pub fn run(target: &str, data: &[u8], scratch: &Path) -> Result<(), String> {
    let Some((&selector, bytes)) = data.split_first() else { return Ok(()) };
    let outcome = match target {
        // Uncompressed, or (odd first byte) through the gzip path.
        "nifti_reader" => {
            let path = scratch.join(if selector & 1 == 1 { "input.nii.gz" } else { "input.nii" });
            std::fs::write(&path, bytes).unwrap();
            xaiclip::io::read_image(&path).map(|v| assert_eq!(v.data.len(), v.voxel_count()))
        }
        // The whole input split at "XSPLIT" into up to three files of one folder.
        "dicom_series" => {
            let dir = scratch.join("series");
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let mut rest = data;
            for i in 0..3 {
                let end = rest.windows(6).position(|w| w == b"XSPLIT").unwrap_or(rest.len());
                std::fs::write(dir.join(format!("{i}.dcm")), &rest[..end]).unwrap();
                if end == rest.len() {
                    break;
                }
                rest = &rest[end + 6..];
            }
            xaiclip::io::read_image(&dir).map(|v| assert_eq!(v.data.len(), v.voxel_count()))
        }
        // u16 config length, config.json, model.safetensors; the first byte's low bit picks the U-Net
        // loader or the CoOp context loader.
        "model_loader" => {
            if bytes.len() < 2 {
                return Ok(());
            }
            let n = (u16::from_le_bytes([bytes[0], bytes[1]]) as usize).min(bytes.len() - 2);
            let (config, weights) = bytes[2..].split_at(n);
            let dir = scratch.join("model");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("config.json"), config).unwrap();
            std::fs::write(dir.join("model.safetensors"), weights).unwrap();
            if selector & 1 == 0 {
                xaiclip::models::BasicUNet::load_dir(&CpuBackend, &dir).map(|_| ())
            } else {
                // Both modalities: MR reads prefixed contexts, or refuses a CT-only folder.
                use xaiclip::preprocess::Modality;
                let modality = if selector & 2 == 0 { Modality::Ct } else { Modality::Mr };
                xaiclip::roi::clip::CoopContexts::load_dir(&dir, modality).map(|_| ())
            }
        }
        // CHAOS CT grey levels, or (odd first byte) MR ones.
        "png_mask" => {
            let path = scratch.join("mask.png");
            std::fs::write(&path, bytes).unwrap();
            let encoding = if selector & 1 == 1 { PngEncoding::ChaosMr } else { PngEncoding::ChaosCt };
            read_png_mask(&path, encoding).map(|(h, w, labels)| assert_eq!(labels.len(), h * w))
        }
        // A torch checkpoint (.pth), every tensor read: the pickle parser and the ZIP/legacy containers.
        "torch_checkpoint" => {
            let path = scratch.join("checkpoint.pth");
            std::fs::write(&path, bytes).unwrap();
            xaiclip::weights::WeightsFile::open(&path).map(|w| {
                for t in w.tensors() {
                    if let Ok(v) = w.get(&t.name) {
                        assert_eq!(v.shape(), &t.shape[..]);
                    }
                }
            })
        }
        other => panic!("unknown fuzz target {other}"),
    };
    outcome.map_err(|e| format!("{e:#}"))
}
