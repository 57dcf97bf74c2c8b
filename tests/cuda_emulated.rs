//! The CUDA backend and kernels/*.cu on a CPU stand-in for the GPU (tests/cuda_emulator/): a libcuda.so
//! built here with g++ that implements the driver calls cudarc makes and runs each kernel's CUDA source
//! as plain C++, block by block, with every thread a fiber. `xaiclip selftest --device cuda --quick` then
//! runs unchanged (cudarc, argument packing, launch shapes, poisoned outputs) and compares every kernel
//! and each explainer end to end with the CPU backend.
//!
//! This checks the kernels' logic: indexing, tiling, barriers, shuffles, rounding, the Philox stream. It
//! does not replace a run on a GPU: nvcc's machine code, the memory model, speed and the tensor cores'
//! own arithmetic are not exercised.

use std::path::Path;
use std::process::Command;
use xaiclip::backend::cuda::{BUILD_STATUS, MODULES};

/// Builds the stand-in libcuda.so into `dir`; `prelude` goes before the kernels (used to break them).
fn build_emulator(dir: &Path, prelude: &str) -> bool {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cuda_emulator/build.sh");
    let built = Command::new("bash").arg(script).arg(dir).arg(prelude).status().is_ok_and(|s| s.success());
    let registry = std::fs::read_to_string(dir.join("kernels.inc")).unwrap_or_default();
    assert!(registry.matches("EMU_KERNEL(").count() >= 20, "the emulator registers too few kernels:\n{registry}");
    built
}

/// `xaiclip selftest --device cuda --quick` on the emulator in `dir`; `shuffle`: a seed for the order
/// threads run in between barriers (EMU_SHUFFLE), None for thread order.
fn selftest(dir: &Path, extra: &[&str], shuffle: Option<u64>) -> (std::process::Output, Option<serde_json::Value>) {
    let json = dir.join("selftest.json");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xaiclip"));
    cmd.args(["selftest", "--device", "cuda", "--quick", "--seed", "7", "--json"])
        .arg(&json)
        .args(extra)
        .env("LD_LIBRARY_PATH", dir);
    if let Some(seed) = shuffle {
        cmd.env("EMU_SHUFFLE", seed.to_string());
    }
    let out = cmd.output().unwrap();
    let report = std::fs::read_to_string(&json).ok().map(|t| serde_json::from_str(&t).unwrap());
    (out, report)
}

/// A freshly built emulator (with `prelude` before the kernels), or None where the tools are missing.
fn emulator(prelude: &str) -> Option<tempfile::TempDir> {
    if skip_without_tools() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    assert!(build_emulator(dir.path(), prelude), "g++ could not build the emulator");
    Some(dir)
}

/// Runs a selftest on an emulator whose kernels are broken: it must fail; returns the failed kernels.
fn failed_kernels(dir: &Path, shuffle: Option<u64>) -> Vec<String> {
    let (out, report) = selftest(dir, &["--kernels-only"], shuffle);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stderr).contains("checks failed"));
    report.unwrap()["kernels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["passed"] == false)
        .map(|k| k["kernel"].as_str().unwrap().to_string())
        .collect()
}

fn skip_without_tools() -> bool {
    let ci = std::env::var("CI").is_ok();
    if MODULES.is_empty() {
        assert!(!ci, "CI must build the kernels: {BUILD_STATUS}");
        eprintln!("SKIP: {BUILD_STATUS}");
        return true;
    }
    if Command::new("g++").arg("--version").output().is_err() {
        assert!(!ci, "CI needs g++ for the kernel emulator");
        eprintln!("SKIP: no g++ for the kernel emulator");
        return true;
    }
    false
}

#[test]
fn every_kernel_and_explainer_matches_the_cpu_on_the_emulator() {
    let Some(dir) = emulator("") else { return };
    let (out, report) = selftest(dir.path(), &[], None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "selftest failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let report = report.expect("selftest wrote its JSON report");
    assert!(report["device"].as_str().unwrap().contains("emulator"), "ran on {}, not the emulator", report["device"]);
    let kernels = report["kernels"].as_array().unwrap();
    assert!(kernels.len() >= 25);
    for k in kernels {
        assert_eq!(k["reference"], "cpu twin", "{k}");
        assert!(
            k["passed"].as_bool().unwrap() && k["max_error"].as_f64().unwrap() < k["bound"].as_f64().unwrap(),
            "{k}"
        );
    }
    // RISE masks are built bit for bit as on the CPU.
    assert!(kernels.iter().any(|k| k["kernel"] == "rise_masks + perturb" && k["max_error"].as_f64() == Some(0.0)));
    let explain = report["explain"].as_array().unwrap();
    assert_eq!(explain.len(), 4);
    for e in explain {
        assert!(e["passed"].as_bool().unwrap() && e["max_error"].as_f64().is_some(), "{e}");
    }
}

#[test]
fn tensor_core_convolutions_match_within_their_precision_on_the_emulator() {
    let Some(dir) = emulator("") else { return };
    for (precision, bound) in [("tf32", 5e-3), ("bf16", 2e-2)] {
        let (out, report) = selftest(dir.path(), &["--kernels-only", "--precision", precision], Some(3));
        assert!(out.status.success(), "{precision}: {}", String::from_utf8_lossy(&out.stdout));
        let report = report.unwrap();
        let convs: Vec<&serde_json::Value> = report["kernels"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| k["kernel"].as_str().unwrap().starts_with("conv2d"))
            .collect();
        assert!(convs.len() >= 6);
        for k in &convs {
            let e = k["max_error"].as_f64().unwrap();
            assert!(e < bound && k["bound"].as_f64() == Some(bound), "{precision}: {k}");
        }
        // Rounded operands show: an f32 path would sit near 1e-7.
        let worst = convs.iter().map(|k| k["max_error"].as_f64().unwrap()).fold(0.0, f64::max);
        assert!(worst > 1e-4, "{precision}: largest conv error {worst:e}, as if the operands were not rounded");
    }
}

#[test]
fn a_wrong_kernel_fails_the_selftest() {
    // Every multiply-add in the kernels drops its accumulator: convolutions and GEMMs go wrong.
    let Some(dir) = emulator("#define fmaf(a, b, c) ((a) * (b))\n") else { return };
    let failed = failed_kernels(dir.path(), None);
    assert!(
        ["conv2d 3x3", "linear_f32", "conv_transpose2x2"].iter().all(|k| failed.iter().any(|f| f == k)),
        "{failed:?}"
    );
    assert!(!failed.iter().any(|k| k.contains("masks")), "mask kernels use no multiply-add: {failed:?}");
}

#[test]
fn kernels_agree_whatever_order_threads_run_in_and_fail_without_barriers() {
    let Some(dir) = emulator("") else { return };
    for seed in [1, 2] {
        let (out, _) = selftest(dir.path(), &["--kernels-only"], Some(seed));
        assert!(out.status.success(), "shuffle {seed}: {}", String::from_utf8_lossy(&out.stdout));
    }
    // The shuffled order does see a missing barrier: without __syncthreads the shared-memory kernels fail.
    let broken = emulator("#define __syncthreads() ((void)0)\n").expect("tools found above");
    let failed = failed_kernels(broken.path(), Some(1));
    for k in ["conv2d 3x3", "linear_f32", "attention_f32", "rise_masks + perturb"] {
        assert!(failed.iter().any(|f| f == k), "{k} passed without barriers: failed {failed:?}");
    }
}

#[test]
fn clip_roi_on_the_emulator_equals_the_cpu() {
    let Some(dir) = emulator("") else { return };
    let bin = env!("CARGO_BIN_EXE_xaiclip");
    let p = dir.path();
    assert!(Command::new(bin)
        .args(["phantom", "--size", "128", "--slices", "8", "--out"])
        .arg(p.join("case"))
        .status()
        .unwrap()
        .success());
    let roi = |device: &str| {
        let out = p.join(format!("roi-{device}.nii.gz"));
        let o = Command::new(bin)
            .args(["roi", "--device", device, "--slice", "organ-center", "--organ", "liver", "--image"])
            .arg(p.join("case/ct.nii.gz"))
            .arg("--label")
            .arg(p.join("case/labels.nii.gz"))
            .arg("--out")
            .arg(&out)
            .env("LD_LIBRARY_PATH", p)
            .output()
            .unwrap();
        assert!(o.status.success(), "{device}: {}", String::from_utf8_lossy(&o.stderr));
        std::fs::read(out).unwrap()
    };
    // The CLIP image and text towers (linear, LayerNorm, attention, QuickGELU kernels) give the same mask.
    assert!(roi("cuda") == roi("cpu"), "the CLIP ROI differs between the emulated GPU and the CPU");
}

#[test]
fn an_nnunet_model_on_the_emulator_segments_as_nnunet_predictor() {
    let Some(dir) = emulator("") else { return };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nnunet_trained");
    let out = dir.path().join("seg.nii.gz");
    // Two slices: the 2d PlainConvUNet as one-slice volumes (conv3d 1x3x3 with strides, transposed
    // conv3d, instance norm over NCDHW, the input map) on the CUDA backend.
    let o = Command::new(env!("CARGO_BIN_EXE_xaiclip"))
        .args(["segment", "--device", "cuda", "--slice", "3,5", "--model"])
        .arg(root.join("Dataset002_Phantom/nnUNetTrainer__nnUNetPlans__2d"))
        .arg("--image")
        .arg(root.join("case.nii.gz"))
        .arg("--out")
        .arg(&out)
        .env("LD_LIBRARY_PATH", dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ours = xaiclip::io::read_image(&out).unwrap();
    let theirs = xaiclip::io::read_image(&root.join("predicted.nii.gz")).unwrap();
    let plane = ours.dims[0] * ours.dims[1];
    for k in [3, 5] {
        let (a, b) = (&ours.data[k * plane..(k + 1) * plane], &theirs.data[k * plane..(k + 1) * plane]);
        assert!(b.iter().any(|&v| v > 0.0), "slice {k} has organs");
        assert_eq!(a.iter().zip(b).filter(|(x, y)| x != y).count(), 0, "slice {k} differs from nnUNetPredictor");
    }
}

#[test]
fn monai_unet_segresnet_and_dynunet_bundles_on_the_emulator_match_the_cpu() {
    let Some(dir) = emulator("") else { return };
    let bundles = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/monai_bundles");
    let case = dir.path().join("case");
    let run = |args: &[&str], device: &str| {
        let o = Command::new(env!("CARGO_BIN_EXE_xaiclip"))
            .args(args)
            .args(["--device", device])
            .env("LD_LIBRARY_PATH", dir.path())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let c = case.to_str().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_xaiclip"))
        .args(["phantom", "--size", "64", "--slices", "16", "--out", c])
        .output()
        .unwrap();
    assert!(o.status.success());
    let ct = case.join("ct.nii.gz");
    let ct = ct.to_str().unwrap();
    let read = |p: &str| xaiclip::io::read_image(&dir.path().join(p)).unwrap().data;
    // 2-D: UNet (transposed conv 1x3x3, stride 1x2x2, padding and output padding; batch norm folded;
    // PReLU), SegResNet (group norm, kernel 2 transposed conv).
    for name in ["unet_2d", "segresnet_2d", "dynunet_2d"] {
        let model = bundles.join(name);
        for device in ["cpu", "cuda"] {
            let out = dir.path().join(format!("{name}-{device}.nii.gz"));
            let args = ["segment", "--model", model.to_str().unwrap(), "--image", ct, "--slice", "7,8", "--size", "64"];
            run(&[&args[..], &["--out", out.to_str().unwrap()]].concat(), device);
        }
        let (cpu, cuda) = (read(&format!("{name}-cpu.nii.gz")), read(&format!("{name}-cuda.nii.gz")));
        assert!(cpu.iter().any(|&v| v > 0.0), "{name}: the random model labels some pixels");
        assert_eq!(cpu, cuda, "{name}: segmentations differ");
    }
    // 3-D whole-volume occlusion: UNet (overlapping 3x3x3 transposed taps, instance norm, residual units),
    // SegResNet (group norm, trilinear upsampling).
    for name in ["unet_3d", "segresnet_3d", "dynunet_3d"] {
        let model = bundles.join(name);
        for device in ["cpu", "cuda"] {
            let out = dir.path().join(format!("{name}-{device}"));
            let args = ["explain", "--model", model.to_str().unwrap(), "--image", ct, "--slice", "all"];
            let rest = ["--organ", "spleen", "--method", "occlusion", "--roi", "none", "--occlusion-window", "32"];
            run(&[&args[..], &rest, &["--out", out.to_str().unwrap()]].concat(), device);
        }
        let (cpu, cuda) = (read(&format!("{name}-cpu/saliency.nii.gz")), read(&format!("{name}-cuda/saliency.nii.gz")));
        let scale = cpu.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = cpu.iter().zip(&cuda).map(|(a, b)| (a - b).abs()).fold(0f32, |m, d| {
            if d.is_nan() {
                f32::INFINITY
            } else {
                m.max(d)
            }
        });
        println!("{name}: 3-D occlusion saliency, emulated CUDA vs CPU: max diff {:.2e} of max", err / scale);
        assert!(scale > 0.0 && err <= 1e-4 * scale, "{name}: max diff {err} of {scale}");
    }
}
