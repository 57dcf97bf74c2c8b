//! A 3-D model that declares its axis code (config.json `layout: "RAS"`, a bundle's `Orientationd`)
//! sees any file reoriented to it: on an LPS volume it computes exactly what the model without a layout
//! computes on the same volume stored in RAS order, and the map comes back on the LPS file's grid.

use std::path::{Path, PathBuf};
use xaiclip::backend::CpuBackend;
use xaiclip::io::Volume;
use xaiclip::models::SegModel;
use xaiclip::roi::RoiMode;
use xaiclip::volumes::{explain_volume, VolumeSettings};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// A copy of the 3-D fixture model whose config.json says `"layout": layout`.
fn with_layout(dir: &Path, layout: &str) -> PathBuf {
    let src = fixture("unet_volume_instance_deconv");
    let out = dir.join(format!("unet_{layout}"));
    std::fs::create_dir_all(&out).unwrap();
    std::fs::copy(src.join("model.safetensors"), out.join("model.safetensors")).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    config["layout"] = layout.into();
    std::fs::write(out.join("config.json"), config.to_string()).unwrap();
    out
}

/// `data` (x fastest on `dims`) with the first two axes reversed.
fn flip_xy<T: Copy>(data: &[T], [nx, ny, nz]: [usize; 3]) -> Vec<T> {
    (0..nx * ny * nz)
        .map(|v| data[(nx - 1 - v % nx) + nx * ((ny - 1 - (v / nx) % ny) + ny * (v / (nx * ny)))])
        .collect()
}

#[test]
fn a_model_with_an_axis_code_sees_every_file_in_that_order() {
    let dir = tempfile::tempdir().unwrap();
    let lps = xaiclip::phantom::generate(3, 64, 32).image;
    assert_eq!(lps.orientation(), "LPS");
    // The same voxels stored in RAS order: x and y reversed, the affine's columns negated and moved.
    let mut affine = lps.affine;
    for (c, n) in [(0, lps.dims[0]), (1, lps.dims[1])] {
        for row in affine.iter_mut().take(3) {
            row[3] += row[c] * (n - 1) as f64;
            row[c] = -row[c];
        }
    }
    let ras = Volume { data: flip_xy(&lps.data, lps.dims), affine, nifti_header: None, ..lps.clone() };
    assert_eq!(ras.orientation(), "RAS");
    assert_eq!(ras.voxel_to_world([0.0; 3]), lps.voxel_to_world([63.0, 63.0, 0.0]));

    let mut settings = VolumeSettings::new([32, 32, 32]);
    settings.roi = RoiMode::Full;
    let run = |model_dir: &Path, volume: &Volume| {
        let model = SegModel::load_dir(&CpuBackend, model_dir).unwrap();
        explain_volume(&CpuBackend, &model, volume, None, 1, &settings, None, |_, _| {}).unwrap()
    };
    let plain = fixture("unet_volume_instance_deconv");
    let reoriented = run(&with_layout(dir.path(), "RAS"), &lps);
    let stored_ras = run(&plain, &ras);
    assert!(reoriented.saliency.iter().any(|&v| v != 0.0));
    assert_eq!(reoriented.saliency, flip_xy(&stored_ras.saliency, lps.dims), "maps differ");
    assert_eq!(reoriented.m0, flip_xy(&stored_ras.m0, lps.dims));
    // Without the layout the model sees the LPS order, another input: another map.
    assert_ne!(run(&plain, &lps).saliency, reoriented.saliency);
    // "ras" is read as RAS; a code without one of each pair is refused, naming the key's choices.
    assert_eq!(run(&with_layout(dir.path(), "ras"), &lps).saliency, reoriented.saliency);
    let err = SegModel::load_dir(&CpuBackend, &with_layout(dir.path(), "RRS")).err().unwrap();
    assert!(format!("{err:#}")
        .contains("layout \"RRS\" is not supported (radiological, voxel, or an axis code such as RAS)"));
}
