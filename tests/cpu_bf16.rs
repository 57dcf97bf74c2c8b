//! bf16 convolutions on the CPU (`--device cpu --precision bf16`, AVX512-BF16): the maps agree with f32
//! (the bar: Pearson r >= 0.999), and a CPU without the instructions refuses the option. tf32
//! (f32 on Winograd F(4x4, 3x3)) stays within 1e-4 of max of the f32 maps.

mod common;
use common::*;
use xaiclip::{Device, Explainer, Method, Precision, Request, RoiMode};

/// Max |a - b| over max |b|, Pearson r, and the Dice of the two maps' top-10% pixels.
fn agreement(a: &[f32], b: &[f32]) -> (f64, f64, f64) {
    let max = b.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
    let diff = a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs() as f64)) / max;
    let top = |m: &[f32]| {
        let mut s = m.to_vec();
        s.sort_by(|x, y| y.total_cmp(x));
        let t = s[s.len() / 10];
        m.iter().map(|&v| v > t).collect::<Vec<_>>()
    };
    let (ta, tb) = (top(a), top(b));
    let both = ta.iter().zip(&tb).filter(|(x, y)| **x && **y).count();
    let dice = 2.0 * both as f64 / (ta.iter().filter(|&&x| x).count() + tb.iter().filter(|&&x| x).count()) as f64;
    (diff, xaiclip::metrics::pearson(a, b), dice)
}

#[test]
fn bf16_maps_agree_with_f32_on_the_demo_slice() {
    if xaiclip::backend::CpuBackend::bf16().is_none() {
        println!("SKIP: this CPU has no AVX512-BF16; --precision bf16 is refused here (see the next test)");
        return;
    }
    let phantom = xaiclip::phantom::generate(7, 256, 32);
    let build = |p| Explainer::builder().device(Device::Cpu).precision(p).build().unwrap();
    let (f32s, bf16s) = (build(Precision::F32), build(Precision::Bf16));
    assert_eq!((f32s.precision(), bf16s.precision()), (Precision::F32, Precision::Bf16));
    assert!(bf16s.device_name().contains("bf16"), "{}", bf16s.device_name());
    for roi in [RoiMode::Full, RoiMode::Clip] {
        let request = Request::new("liver", Method::Occlusion).roi(roi).labels(phantom.labels.clone());
        let reference = f32s.explain(&phantom.image, &request).unwrap();
        let reduced = bf16s.explain(&phantom.image, &request).unwrap();
        let (diff, r, dice) = agreement(&reduced.run.saliency, &reference.run.saliency);
        println!(
            "occlusion ({}): bf16 vs f32 max diff {diff:.2e} of max, Pearson r {r:.6}, top-10% Dice {dice:.4}",
            roi.name()
        );
        assert!(r >= 0.999 && dice >= 0.9 && diff < 0.05, "{roi:?}: r {r}, Dice {dice}, diff {diff}");
        // bf16 is not f32 by another name: the maps differ somewhere.
        assert!(diff > 0.0);
    }
}

#[test]
fn tf32_maps_stay_within_1e4_of_max_of_f32() {
    if !std::arch::is_x86_feature_detected!("avx512f") {
        println!("SKIP: this CPU has no AVX-512F; --precision tf32 computes as f32 here");
        return;
    }
    let phantom = xaiclip::phantom::generate(7, 256, 32);
    let build = |p| Explainer::builder().device(Device::Cpu).precision(p).build().unwrap();
    let (f32s, tf32s) = (build(Precision::F32), build(Precision::Tf32));
    assert_eq!(tf32s.precision(), Precision::Tf32);
    assert!(tf32s.device_name().contains("F(4x4, 3x3)"), "{}", tf32s.device_name());
    // Occlusion on the full image, RISE (random masks, the same on both) in the CLIP ROI.
    for (method, roi) in [(Method::Occlusion, RoiMode::Full), (Method::Rise, RoiMode::Clip)] {
        let request = Request::new("liver", method).roi(roi).labels(phantom.labels.clone());
        let reference = f32s.explain(&phantom.image, &request).unwrap();
        let fast = tf32s.explain(&phantom.image, &request).unwrap();
        let (diff, r, _) = agreement(&fast.run.saliency, &reference.run.saliency);
        println!("{method:?}: tf32 vs f32 max diff {diff:.2e} of max, Pearson r {r:.8}");
        assert!(diff < 1e-4 && diff > 0.0, "{method:?}: {diff} of max");
    }
}

#[test]
fn bf16_is_refused_on_a_cpu_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let ct = small_phantom(dir.path());
    let out = dir.path().join("labels.nii.gz");
    // XAICLIP_CPU_CAPABILITY=avx2 hides AVX-512 (and so AVX512-BF16) on any CPU.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_xaiclip"))
        .env("XAICLIP_CPU_CAPABILITY", "avx2")
        .args(["segment", "--device", "cpu", "--precision", "bf16", "--image"])
        .arg(&ct)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("error: --precision bf16 on the CPU needs AVX512-BF16"), "{err}");
    assert!(!err.contains("panicked") && !out.exists(), "{err}");
}
