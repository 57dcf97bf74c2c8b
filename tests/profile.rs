//! `xaiclip profile`: every layer of a forward is timed, and the FLOPs it counts from the calls' shapes
//! add up to the model's own FLOP count (so the per-layer rates it prints are right).

mod common;
use common::*;
use xaiclip::backend::CpuBackend;
use xaiclip::models::SegModel;
use xaiclip::{Device, Precision};

#[test]
fn per_layer_flops_add_up_to_the_models_count() {
    let model = SegModel::load_dir(&CpuBackend, &repo().join("weights/unet")).unwrap();
    let (name, profiles) =
        xaiclip::bench::profile_forward(Device::Cpu, Precision::F32, None, &[32, 48], &[2], 2, |_, _| {}).unwrap();
    assert_eq!(name, model.describe());
    assert_eq!(profiles.len(), 2);
    for p in &profiles {
        let want = p.batch as f64 * model.flops(&[p.size, p.size]);
        assert!((p.flops - want).abs() <= 1e-9 * want, "{}²: {} FLOPs counted, the model has {want}", p.size, p.flops);
        assert_eq!(p.seconds.len(), 2);
        assert!(p.seconds.iter().all(|s| *s > 0.0) && p.median_seconds > 0.0);
        // Every layer once per forward: 18 3x3 convolutions with their instance norms (2 per block, 9
        // blocks) and the 1x1 head.
        let calls = |op| p.ops.iter().filter(|o| o.op == op).map(|o| o.calls).sum::<usize>();
        assert_eq!((calls("conv2d_norm"), calls("conv2d_fused"), calls("instance_norm")), (18, 1, 0), "{:?}", p.ops);
        let layers: f64 = p.ops.iter().map(|o| o.seconds).sum();
        assert!(layers <= p.median_seconds * 1.5, "layer times {layers} exceed the forward's {}", p.median_seconds);
    }
}

#[test]
fn profile_prints_the_table_and_writes_json_and_refuses_bad_options() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("forward.json");
    let o = xaiclip(&["profile", "--sizes", "32", "--batches", "1", "--repeat", "1", "--json", json.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("cpu: ") && out.contains("size 32x32, batch 1") && out.contains("| conv2d_norm |"), "{out}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["profiles"][0]["size"], 32);
    assert!(report["profiles"][0]["ops"].as_array().unwrap().len() > 5);
    fails(&["profile", "--sizes", "0"], &["--sizes and --batches must be positive"]);
    fails(
        &["profile", "--model", repo().join("weights/unet3d").to_str().unwrap(), "--sizes", "32"],
        &["weights/unet3d", "profile times 2-D models"],
    );
}
