//! Sliding-window inference against MONAI's `sliding_window_inference` on the same 3-D BasicUNet
//! (tests/fixtures/make_sliding_window_fixture.py): Gaussian and constant blending, a volume thinner
//! than a tile (padded, then cropped), several tiles per forward.

use serde_json::Value;
use std::path::PathBuf;
use xaiclip::backend::CpuBackend;
use xaiclip::models::sliding::{sliding_window_inference, Blend, SlidingWindow};
use xaiclip::models::BasicUNet;
use xaiclip::weights::WeightsFile;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

#[test]
fn matches_monai_sliding_window_inference() {
    let path = fixture("sliding_window/io.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    let cases: serde_json::Map<String, Value> = serde_json::from_str(&meta["cases"]).unwrap();
    assert_eq!(cases.len(), 2);
    let model = BasicUNet::load_dir(&CpuBackend, &fixture(&meta["model"])).unwrap();
    let io = WeightsFile::open(&path).unwrap();
    for (name, case) in &cases {
        let roi: Vec<usize> =
            case["roi_size"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        let window = SlidingWindow {
            roi_size: [roi[0], roi[1], roi[2]],
            overlap: case["overlap"].as_f64().unwrap(),
            blend: if case["mode"] == "gaussian" { Blend::Gaussian } else { Blend::Constant },
            batch: case["sw_batch_size"].as_u64().unwrap() as usize,
            ..SlidingWindow::new([roi[0], roi[1], roi[2]])
        };
        let x = io.get(&format!("{name}.input")).unwrap();
        let mut forwards = 0;
        let y = sliding_window_inference(&CpuBackend, &x, &window, |t| {
            forwards += 1;
            model.forward_logits(&CpuBackend, t)
        })
        .unwrap();
        let want = io.get(&format!("{name}.logits")).unwrap();
        let err = y.max_rel_error(&want, 0.01 * want.max_abs());
        let tiles = window.plan([x.shape()[2], x.shape()[3], x.shape()[4]]).unwrap().tiles.len();
        println!("{name}: {tiles} tiles in {forwards} forwards, logits max rel err {err:.2e}");
        assert_eq!(forwards, tiles.div_ceil(window.batch));
        assert!(err < 1e-4, "{name}: max rel error {err}");
    }
}
