//! nnU-Net's resampling: xaiclip's against nnunetv2's own `resample_data_or_seg_to_shape` on random
//! arrays, and whole volumes at spacings other than the plans' against nnUNetPredictor
//! (tests/fixtures/make_nnunet_resampling_fixture.py).

mod common;
use common::*;
use std::path::PathBuf;
use xaiclip::resample::{new_shape, resample, Orders};
use xaiclip::weights::WeightsFile;

fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures/nnunet_resampling").join(name)
}

#[test]
fn resampling_matches_nnunet_on_every_path() {
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("cases.json")).unwrap()).unwrap();
    let arrays = WeightsFile::open(&fixture("arrays.safetensors")).unwrap();
    let three = |v: &serde_json::Value| -> [f64; 3] { std::array::from_fn(|a| v[a].as_f64().unwrap()) };
    let cases = cases.as_object().unwrap();
    assert_eq!(cases.len(), 7);
    for (name, case) in cases {
        let shape = three(&case["shape"]).map(|v| v as usize);
        let target = three(&case["target_shape"]).map(|v| v as usize);
        let (current, new) = (three(&case["current"]), three(&case["new"]));
        assert_eq!(new_shape(shape, current, new), target, "{name}");
        let orders =
            Orders { order: case["order"].as_u64().unwrap() as u8, order_z: case["order_z"].as_u64().unwrap() as u8 };
        let input = arrays.get(&format!("{name}.input")).unwrap();
        let expected = arrays.get(&format!("{name}.output")).unwrap();
        let out = resample(input.data(), shape, target, current, new, orders);
        let (err, scale) = max_error(&out, expected.data());
        println!("{name}: {shape:?} -> {target:?}, {orders:?}: max |diff| {err:.2e} of max {scale:.2}");
        assert!(err <= 1e-5 * scale, "{name}: off by {err} (max {scale})");
    }
}
