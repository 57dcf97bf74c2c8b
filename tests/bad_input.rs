//! Bad input: each case gives a one-line error naming the file and the problem, exit status 2, and
//! leaves no output file (not even a temporary one) behind.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use xaiclip::io::{nifti, Volume};

fn volume(dims: [usize; 3], data: Vec<f32>) -> Volume {
    let affine = [[1.5, 0.0, 0.0, -10.0], [0.0, 1.5, 0.0, 5.0], [0.0, 0.0, 2.5, 0.0], [0.0, 0.0, 0.0, 1.0]];
    Volume { dims, data, affine, source: PathBuf::from("test"), nifti_header: None, modality: None }
}

/// A 24^3 CT-like volume with noise, so a gzip of it does not compress to nothing.
fn write_ct(path: &Path) {
    let rng = xaiclip::rng::Philox::new(5);
    let data: Vec<f32> = (0..24 * 24 * 24).map(|i| (rng.uniform(i) * 400.0 - 200.0).round()).collect();
    nifti::write_like(path, &volume([24, 24, 24], data.iter().map(|&v| v as i16).map(f32::from).collect()), &data)
        .unwrap();
}

fn patch(path: &Path, offset: usize, bytes: &[u8]) {
    let mut raw = std::fs::read(path).unwrap();
    raw[offset..offset + bytes.len()].copy_from_slice(bytes);
    std::fs::write(path, raw).unwrap();
}

/// Runs `segment` on `image` and checks the failure contract; returns the error line.
fn segment_fails(image: &Path, extra: &[&str], expect: &[&str]) -> String {
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("labels.nii.gz");
    let unet = repo().join("tests/fixtures/unet_instance_deconv");
    let mut args = vec![
        "segment",
        "--image",
        image.to_str().unwrap(),
        "--unet",
        unet.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--size",
        "32",
    ];
    args.extend_from_slice(extra);
    let o = xaiclip(&args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "expected exit 2, got {:?}: {err}", o.status);
    assert!(!err.contains("panicked"), "panic: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    for e in expect {
        assert!(lines[0].contains(e), "error line lacks {e:?}: {}", lines[0]);
    }
    assert!(files_in(out_dir.path()).is_empty(), "left behind: {:?}", files_in(out_dir.path()));
    lines[0].to_string()
}

#[test]
fn missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("nothing-here.nii.gz");
    segment_fails(&p, &[], &["nothing-here.nii.gz", "cannot open"]);
}

#[test]
fn truncated_gz() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cut.nii.gz");
    write_ct(&p);
    let raw = std::fs::read(&p).unwrap();
    std::fs::write(&p, &raw[..raw.len() * 6 / 10]).unwrap();
    segment_fails(&p, &[], &["cut.nii.gz", "truncated"]);
}

#[test]
fn truncated_uncompressed() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cut.nii");
    write_ct(&p);
    let raw = std::fs::read(&p).unwrap();
    std::fs::write(&p, &raw[..raw.len() / 2]).unwrap();
    segment_fails(&p, &[], &["cut.nii", "truncated"]);
}

#[test]
fn not_a_nifti_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("notes.nii");
    std::fs::write(&p, "these are notes, not a volume\n".repeat(20)).unwrap();
    segment_fails(&p, &[], &["notes.nii", "not a readable NIfTI-1 file"]);
}

#[test]
fn unsupported_datatype() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("complex.nii");
    write_ct(&p);
    patch(&p, 70, &32i16.to_le_bytes()); // datatype = complex64
    patch(&p, 72, &64i16.to_le_bytes()); // bitpix
    segment_fails(&p, &[], &["complex.nii", "unsupported datatype Complex64"]);
}

#[test]
fn four_d_volume() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("fmri.nii");
    write_ct(&p);
    patch(&p, 40, &4i16.to_le_bytes()); // dim[0] = 4
    patch(&p, 48, &3i16.to_le_bytes()); // dim[4] = 3 time points
    segment_fails(&p, &[], &["fmri.nii", "4-D volume", "3-D volumes"]);
}

#[test]
fn absurd_dimensions_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("huge.nii");
    write_ct(&p);
    for (i, offset) in [42, 44, 46].into_iter().enumerate() {
        patch(&p, offset, &(30000i16 - i as i16).to_le_bytes());
    }
    segment_fails(&p, &[], &["huge.nii", "outside the supported range"]);
}

#[test]
fn nan_voxels() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("nan.nii.gz");
    let mut data = vec![0.0f32; 20 * 20 * 20];
    data[3 + 20 * (4 + 20 * 5)] = f32::NAN;
    nifti::write_like(&p, &volume([20, 20, 20], data.clone()), &data).unwrap();
    segment_fails(&p, &[], &["nan.nii.gz", "1 voxels are NaN or infinite", "(3, 4, 5)"]);
}

#[test]
fn slice_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ct.nii.gz");
    write_ct(&p);
    segment_fails(&p, &["--slice", "24"], &["ct.nii.gz", "slice 24 is out of range", "24 axial slices"]);
    segment_fails(&p, &["--slice", "two"], &["--slice \"two\""]);
}

#[test]
fn bad_window() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ct.nii.gz");
    write_ct(&p);
    segment_fails(&p, &["--window", "240,-160"], &["--window", "LOW < HIGH"]);
}

#[test]
fn empty_dicom_folder_and_non_dicom_file() {
    let dir = tempfile::tempdir().unwrap();
    let series = dir.path().join("series");
    std::fs::create_dir(&series).unwrap();
    segment_fails(&series, &[], &["series", "holds no DICOM files"]);
    std::fs::write(series.join("IM0001"), b"not dicom at all").unwrap();
    segment_fails(&series, &[], &["IM0001", "not a readable DICOM file"]);
}

#[test]
fn dicom_folder_with_mixed_series() {
    let Some(shared) = shared_data() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(shared.join("ct_dicom")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for (i, f) in files.iter().take(4).enumerate() {
        let mut obj = dicom_object::open_file(f).unwrap();
        if i >= 2 {
            obj.put(dicom_object::mem::InMemElement::new(
                dicom_dictionary_std::tags::SERIES_INSTANCE_UID,
                dicom_core::VR::UI,
                dicom_core::PrimitiveValue::from("1.2.826.0.1.3680043.2.1125.99"),
            ));
        }
        obj.write_to_file(dir.path().join(format!("slice{i}.dcm"))).unwrap();
    }
    segment_fails(dir.path(), &[], &["mixes 2 series", "2 files"]);
}

#[test]
fn weights_that_do_not_match_their_config() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ct.nii.gz");
    write_ct(&p);
    let unet = dir.path().join("unet");
    std::fs::create_dir(&unet).unwrap();
    let fixture = repo().join("tests/fixtures/unet_instance_deconv");
    std::fs::copy(fixture.join("model.safetensors"), unet.join("model.safetensors")).unwrap();
    std::fs::write(
        unet.join("config.json"),
        r#"{"spatial_dims": 2, "in_channels": 1, "out_channels": 5, "features": [4, 4, 8, 8, 16, 4]}"#,
    )
    .unwrap();
    let out = dir.path().join("o.nii.gz");
    let o = xaiclip(&[
        "segment",
        "--image",
        p.to_str().unwrap(),
        "--unet",
        unet.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("model.safetensors")
            && err.contains("final_conv.weight has shape [3, 4, 1, 1], expected [5, 4, 1, 1]"),
        "{err}"
    );
    assert!(!out.exists());
    std::fs::write(unet.join("config.json"), "{ not json").unwrap();
    let o = xaiclip(&[
        "segment",
        "--image",
        p.to_str().unwrap(),
        "--unet",
        unet.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(stderr(&o).contains("config.json: bad U-Net config: invalid JSON"), "{}", stderr(&o));
    std::fs::write(unet.join("model.safetensors"), b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":").unwrap();
    std::fs::write(unet.join("config.json"), "{}").unwrap();
    let o = xaiclip(&["info", unet.to_str().unwrap()]);
    assert!(stderr(&o).contains("model.safetensors: not a valid safetensors file"), "{}", stderr(&o));
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn unwritable_output_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ct.nii.gz");
    write_ct(&p);
    let unet = repo().join("tests/fixtures/unet_instance_deconv");
    let out = dir.path().join("no-such-folder/labels.nii.gz");
    let o = xaiclip(&[
        "segment",
        "--image",
        p.to_str().unwrap(),
        "--unet",
        unet.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--size",
        "32",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("labels.nii.gz: cannot create a file in"), "{}", stderr(&o));
}

#[test]
fn bench_output_in_missing_folder_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("no-such-folder/bench.json");
    let html = dir.path().join("bench.html");
    let o = xaiclip(&["bench", "--demo", "--html", html.to_str().unwrap(), "--json", json.to_str().unwrap()]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    // One line and nothing else: no progress, so no run was started before the refusal.
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains("bench.json: cannot write there: the folder") && lines[0].contains("does not exist"),
        "{err}"
    );
    assert!(files_in(dir.path()).is_empty(), "left behind: {:?}", files_in(dir.path()));
}

#[test]
fn torch_checkpoints_that_cannot_be_used() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = repo().join("tests/fixtures/torch_checkpoints");
    // Cut in half: the ZIP directory at its end is gone.
    let cut = dir.path().join("checkpoint_final.pth");
    let bytes = std::fs::read(fixtures.join("checkpoint_final.pth")).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    // (The reader's own message says "zip archive error: ...", so the whole stderr is checked here.)
    let o = xaiclip(&["info", cut.to_str().unwrap()]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("checkpoint_final.pth: not a readable PyTorch checkpoint (zip archive error"), "{err}");
    let text = dir.path().join("notes.pt");
    std::fs::write(&text, "not a checkpoint\n").unwrap();
    fails(
        &["info", text.to_str().unwrap()],
        &["notes.pt: not a readable PyTorch checkpoint", "no ZIP, TAR, legacy or pickle header"],
    );
    // A pickle whose object would run a shell command: parsed, never executed, and it holds no tensor.
    let code = fixtures.join("code.pt");
    fails(&["info", code.to_str().unwrap()], &["code.pt: the checkpoint holds no tensors"]);
    assert!(!fixtures.join("executed.txt").exists() && !Path::new("executed.txt").exists());
    // Integer weights are listed, but refused when a model asks for them.
    let ints = xaiclip::weights::WeightsFile::open(&fixtures.join("ints.pt")).unwrap();
    let err = ints.get("conv.weight").unwrap_err().to_string();
    assert!(err.contains("ints.pt: tensor conv.weight has dtype I64; weights must be F32, F16 or BF16"), "{err}");
}

#[test]
fn cuda_device_unavailable() {
    // Here: built without nvcc, or kernels but no driver. On a machine with a usable GPU the command
    // succeeds and there is nothing to check.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ct.nii.gz");
    write_ct(&p);
    let unet = repo().join("tests/fixtures/unet_instance_deconv");
    let out = dir.path().join("labels.nii.gz");
    let o = xaiclip(&[
        "segment",
        "--device",
        "cuda",
        "--image",
        p.to_str().unwrap(),
        "--unet",
        unet.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--size",
        "32",
        "--slice",
        "3",
    ]);
    if o.status.success() {
        eprintln!("SKIP: a CUDA device is usable here");
        return;
    }
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].starts_with("error: --device cuda: "), "{err}");
    assert!(
        ["built without nvcc", "no CUDA driver found", "reports no GPU"].iter().any(|r| lines[0].contains(r)),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn bad_device_spec() {
    for (spec, expect) in
        [("tpu", "expected auto, cpu, cuda or cuda:N"), ("cuda:x", "expected cuda:N with N a GPU index")]
    {
        let o = xaiclip(&["selftest", "--device", spec]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.lines().next().is_some_and(|l| l.starts_with("error: ") && l.contains(expect)), "{err}");
    }
}

#[test]
fn nifti_roundtrip_keeps_values_and_geometry() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["v.nii", "v.nii.gz"] {
        let p = dir.path().join(name);
        let data: Vec<f32> = (0..6 * 5 * 4).map(|v| v as f32 * 0.5 - 3.0).collect();
        let v = volume([6, 5, 4], data.clone());
        nifti::write_like(&p, &v, &data).unwrap();
        let back = xaiclip::io::read_image(&p).unwrap();
        assert_eq!((back.dims, &back.data), (v.dims, &data));
        assert_eq!(back.affine, v.affine);
        assert_eq!(files_in(dir.path()).len(), if name == "v.nii" { 1 } else { 2 }, "no temporary files remain");
    }
}

/// A copy of the tiny PlainConvUNet result folder of `configuration` whose plans/dataset JSON `edit` may
/// change.
fn nnunet_copy(
    dir: &Path,
    configuration: &str,
    edit: impl FnOnce(&mut serde_json::Value, &mut serde_json::Value),
) -> PathBuf {
    let name = format!("nnUNetTrainer__nnUNetPlans__{configuration}");
    let src = repo().join("tests/fixtures/nnunet/Dataset001_Tiny").join(&name);
    let dst = dir.join(name);
    std::fs::create_dir_all(dst.join("fold_0")).unwrap();
    std::fs::copy(src.join("fold_0/checkpoint_final.pth"), dst.join("fold_0/checkpoint_final.pth")).unwrap();
    let read =
        |f: &str| serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(src.join(f)).unwrap()).unwrap();
    let (mut plans, mut dataset) = (read("plans.json"), read("dataset.json"));
    edit(&mut plans, &mut dataset);
    std::fs::write(dst.join("plans.json"), plans.to_string()).unwrap();
    std::fs::write(dst.join("dataset.json"), dataset.to_string()).unwrap();
    dst
}

#[test]
fn a_2d_nnunet_slice_with_nothing_to_explain() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let fixture = |p: &str| repo().join("tests/fixtures").join(p);
    let explain = |model: &Path, image: &Path, extra: &[&str], expect: &[&str]| {
        let args =
            ["explain", "--model", model.to_str().unwrap(), "--image", image.to_str().unwrap(), "--organ", "liver"];
        let rest = ["--method", "occlusion", "--roi", "none", "--out", out.to_str().unwrap()];
        fails(&[&args[..], extra, &rest].concat(), expect);
        assert!(!out.exists());
    };
    // A slice nnU-Net crops away (all zero): it labels it background without running the network.
    let mr = fixture("nnunet_zscore/Dataset003_TinyMR/nnUNetTrainer__nnUNetPlans__2d");
    let cropped = fixture("nnunet_resampling/cropped_mr.nii.gz");
    let volume = xaiclip::io::read_image(&cropped).unwrap();
    let plane = volume.dims[0] * volume.dims[1];
    let zero =
        (0..volume.dims[2]).find(|&k| volume.data[k * plane..(k + 1) * plane].iter().all(|&v| v == 0.0)).unwrap();
    let slice = zero.to_string();
    explain(
        &mr,
        &cropped,
        &["--slice", &slice],
        &[&format!("slice {zero} holds no nonzero voxel: nnU-Net crops it away")],
    );
    // A labelled slice without the organ.
    let ct = fixture("nnunet/Dataset001_Tiny/nnUNetTrainer__nnUNetPlans__2d");
    let coarse = fixture("nnunet_resampling/coarse.nii.gz");
    let image = xaiclip::io::read_image(&coarse).unwrap();
    let plane = image.dims[0] * image.dims[1];
    let labels: Vec<u8> = (0..image.data.len()).map(|v| u8::from(v / plane == 2)).collect();
    let label = tmp.path().join("labels.nii.gz");
    xaiclip::io::nifti::write_like(&label, &image, &labels).unwrap();
    let with_labels = ["--label", label.to_str().unwrap(), "--label-ids", "model", "--slice"];
    explain(&ct, &coarse, &[&with_labels[..], &["5"]].concat(), &["coarse.nii.gz: slice 5 has no liver in the labels"]);
    // A slice where the model predicts none of the organ (this random-weight model, mirrored, on slice 3).
    explain(
        &ct,
        &coarse,
        &["--slice", "3", "--mirror"],
        &["the model predicts no liver in this volume's slice 3: nothing to explain"],
    );
}

#[test]
fn nnunet_result_folders_that_cannot_be_used() {
    let tmp = tempfile::tempdir().unwrap();
    let case = |name: &str, edit: fn(&mut serde_json::Value, &mut serde_json::Value)| {
        let dir = tmp.path().join(name);
        nnunet_copy(&dir, "2d", edit)
    };
    let info = |dir: &Path, expect: &[&str]| fails(&["info", dir.to_str().unwrap()], expect);
    // Corrupt plans: not JSON.
    let corrupt = case("corrupt", |_, _| {});
    std::fs::write(corrupt.join("plans.json"), "{\"configurations\": ").unwrap();
    info(&corrupt, &["plans.json: invalid JSON"]);
    // No checkpoint in any fold.
    let empty = case("empty", |_, _| {});
    std::fs::remove_file(empty.join("fold_0/checkpoint_final.pth")).unwrap();
    info(&empty, &["no fold_K/checkpoint_final.pth (or checkpoint_best.pth)"]);
    // Plans and weights disagree: every mismatch listed at once.
    let wider = case("wider", |p, _| {
        p["configurations"]["2d"]["architecture"]["arch_kwargs"]["features_per_stage"] =
            serde_json::json!([8, 16, 24, 40])
    });
    let msg = info(
        &wider,
        &[
            "checkpoint_final.pth: weights do not match the model config",
            "encoder.stages.3.0.convs.0.conv.weight has shape [32, 24, 3, 3], expected [40, 24, 3, 3]",
        ],
    );
    assert!(msg.matches("has shape").count() > 3, "{msg}");
    // A network class xaiclip does not run.
    let primus = case("primus", |p, _| {
        p["configurations"]["2d"]["architecture"]["network_class_name"] =
            "dynamic_network_architectures.architectures.primus.Primus".into()
    });
    info(&primus, &["network Primus is not supported (PlainConvUNet and ResidualEncoderUNet are)"]);
    // An argument whose effect xaiclip does not reproduce is refused, not ignored.
    let se =
        case("se", |p, _| p["configurations"]["2d"]["architecture"]["arch_kwargs"]["squeeze_excitation"] = true.into());
    info(&se, &["arch_kwargs.squeeze_excitation is not supported"]);
    // Region-based training (labels as lists of ids).
    let regions = case("regions", |_, d| {
        d["labels"] = serde_json::json!({"background": 0, "whole": [1, 2], "core": 2});
        d["regions_class_order"] = serde_json::json!([1, 2]);
    });
    info(&regions, &["dataset.json", "region-based labels (lists of ids) are not supported"]);
    // A configuration the folder name asks for but the plans lack.
    let missing = case("missing", |p, _| {
        p["configurations"].as_object_mut().unwrap().remove("2d");
    });
    info(&missing, &["plans.json has no configuration \"2d\" (it has 3d_fullres)"]);
    // A normalisation other than CT's and z-scores: info describes it, explain refuses it.
    let rescale = case("rescale", |p, _| {
        p["configurations"]["2d"]["normalization_schemes"] = serde_json::json!(["RescaleTo01Normalization"])
    });
    let o = xaiclip(&["info", rescale.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("RescaleTo01Normalization (not supported by explain/segment yet)")
    );
    let ct = tmp.path().join("ct.nii.gz");
    write_ct(&ct);
    let out = tmp.path().join("seg.nii.gz");
    fails(
        &[
            "segment",
            "--image",
            ct.to_str().unwrap(),
            "--model",
            rescale.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &["the model normalises its input with RescaleTo01Normalization; CTNormalization and ZScoreNormalization are supported"],
    );
    assert!(!out.exists());
    // An organ the model has no class for, named with the model's own classes.
    let model = repo().join("tests/fixtures/nnunet/Dataset001_Tiny/nnUNetTrainer__nnUNetPlans__2d");
    let explained = tmp.path().join("explained");
    fails(
        &[
            "explain",
            "--image",
            ct.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--organ",
            "pancreas",
            "--slice",
            "0",
            "--method",
            "occlusion",
            "--roi",
            "none",
            "--out",
            explained.to_str().unwrap(),
        ],
        &["organ \"pancreas\" is not one of the model's classes (0 background, 1 liver, 2 spleen)"],
    );
    // A window that is not the model's own.
    fails(
        &[
            "segment",
            "--image",
            ct.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--window",
            "-160,240",
            "--out",
            out.to_str().unwrap(),
        ],
        &["the model normalises its input itself", "drop --window/--modality"],
    );
    // A 3-D nnU-Net model whose plans resample with a function xaiclip lacks, over a volume at another
    // spacing (at the plans' spacing it would run: the resampling is refused only where it is needed).
    let torch = nnunet_copy(&tmp.path().join("torchres"), "3d_fullres", |p, _| {
        p["configurations"]["3d_fullres"]["resampling_fn_data"] = "resample_torch_fornnunet".into()
    });
    let volume = tmp.path().join("volume");
    fails(
        &[
            "explain",
            "--image",
            ct.to_str().unwrap(),
            "--model",
            torch.to_str().unwrap(),
            "--slice",
            "all",
            "--method",
            "occlusion",
            "--out",
            volume.to_str().unwrap(),
        ],
        &[
            "nnU-Net would resample this volume from [2.500, 1.500, 1.500] mm to the plans' [2.500, 0.800, 0.800] mm",
            "with resampling_fn_data resample_torch_fornnunet (xaiclip has resample_data_or_seg_to_shape)",
        ],
    );
    assert!(!volume.exists());
}

#[test]
fn monai_bundles_that_cannot_be_used() {
    let tmp = tempfile::tempdir().unwrap();
    let bundles = repo().join("tests/fixtures/monai_bundles");
    let from = |src: &str, name: &str, edit: &dyn Fn(&mut serde_json::Value)| {
        let (src, dst) = (bundles.join(src), tmp.path().join(name));
        for sub in ["configs", "models"] {
            std::fs::create_dir_all(dst.join(sub)).unwrap();
        }
        std::fs::copy(src.join("models/model.pt"), dst.join("models/model.pt")).unwrap();
        std::fs::copy(src.join("configs/metadata.json"), dst.join("configs/metadata.json")).unwrap();
        let mut inference: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(src.join("configs/inference.json")).unwrap()).unwrap();
        edit(&mut inference);
        std::fs::write(dst.join("configs/inference.json"), inference.to_string()).unwrap();
        dst
    };
    let case = |name: &str, edit: &dyn Fn(&mut serde_json::Value)| from("basicunet_2d", name, edit);
    let info = |dir: &Path, expect: &[&str]| fails(&["info", dir.to_str().unwrap()], expect);
    let swin = case("swin", &|c| c["network_def"]["_target_"] = "monai.networks.nets.SwinUNETR".into());
    info(
        &swin,
        &["inference.json: network monai.networks.nets.SwinUNETR is not supported (BasicUNet, UNet, SegResNet and DynUNet are)"],
    );
    for (key, value, expect) in [
        ("strides", serde_json::json!([1, 2]), "kernel_size has 3 entries and strides 2: they must match, 3 or more"),
        ("upsample_kernel_size", serde_json::json!([2]), "upsample_kernel_size has 1 entries; 3 levels need 2"),
        ("norm_name", serde_json::json!("group"), "norm_name group needs num_groups"),
        ("act_name", serde_json::json!("prelu"), "act_name \"prelu\" is not supported (leakyrelu, relu or gelu)"),
        ("filters", serde_json::json!([4, 8]), "filters has 2 entries; 3 levels need as many"),
    ] {
        let dir = from("dynunet_3d", &format!("dynunet-{key}"), &|c: &mut serde_json::Value| {
            c["network_def"][key] = value.clone()
        });
        info(&dir, &["inference.json: network_def", expect]);
    }
    for (key, value, expect) in [
        ("norm", serde_json::json!("batch"), "norm \"batch\" is not supported in SegResNet (group or instance; a batch norm before a conv cannot be folded into it)"),
        ("upsample_mode", serde_json::json!("pixelshuffle"), "upsample_mode Some(\"pixelshuffle\") is not supported (nontrainable or deconv)"),
        ("blocks_up", serde_json::json!([1]), "blocks_up has 1 entries for 3 encoder levels: only a decoder back to full resolution (one fewer) is supported"),
        ("use_conv_final", serde_json::json!(false), "use_conv_final false gives features, not class logits"),
    ] {
        let dir = from("segresnet_3d", &format!("segresnet-{key}"), &|c: &mut serde_json::Value| {
            c["network_def"][key] = value.clone()
        });
        info(&dir, &["inference.json: network_def", expect]);
    }
    let groups = from("segresnet_3d", "segresnet-groups", &|c: &mut serde_json::Value| {
        c["network_def"]["norm"] = serde_json::json!(["group", {"num_groups": 3}])
    });
    info(&groups, &["num_groups 3 does not divide level 0's 8 channels"]);
    // UNet: BasicUNet's weights under a UNet network_def, arguments it cannot reproduce.
    let mismatch = case("mismatch", &|c| {
        c["network_def"] = serde_json::json!({"_target_": "UNet", "spatial_dims": 2, "in_channels": 1,
            "out_channels": 3, "channels": [8, 16], "strides": [2]})
    });
    info(
        &mismatch,
        &["weights do not match the model config", "missing model.0.conv.weight (expected shape [8, 1, 3, 3])"],
    );
    for (key, value, expect) in [
        (
            "act",
            serde_json::json!(["prelu", {"num_parameters": 8}]),
            "act PReLU with num_parameters 8 (a slope per channel) is not supported",
        ),
        (
            "norm",
            serde_json::json!(["group", {"num_groups": 4}]),
            "norm \"group\" is not supported (instance, batch or none; group norm is not yet)",
        ),
        ("kernel_size", serde_json::json!(4), "kernel_size [1, 4, 4]: only odd kernels have MONAI's same padding"),
        ("strides", serde_json::json!([2, 2]), "strides has 2 entries; 4 channels need 3"),
        (
            "adn_ordering",
            serde_json::json!("AN"),
            "adn_ordering with the batch norm after the activation is not supported",
        ),
        ("subunits", serde_json::json!(2), "network_def.subunits is not a UNet argument xaiclip reads"),
    ] {
        let dir = from("unet_2d", key, &|c: &mut serde_json::Value| c["network_def"][key] = value.clone());
        info(&dir, &["inference.json: network_def", expect]);
    }
    // Spacingd: in a 2-D bundle, with an argument xaiclip does not reproduce, before Orientationd.
    let spacingd = |extra: serde_json::Value| {
        let mut t = serde_json::json!({"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 2.0]});
        t.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        t
    };
    let insert = |c: &mut serde_json::Value, at: usize, t: serde_json::Value| {
        c["preprocessing"]["transforms"].as_array_mut().unwrap().insert(at, t)
    };
    let flat = case("spacing-2d", &|c| insert(c, 2, spacingd(serde_json::json!({}))));
    info(&flat, &["preprocessing: Spacingd in a 2-D bundle is not applied (slices are resized to the model grid)"]);
    for (name, extra, expect) in [
        ("nearest", serde_json::json!({"mode": "nearest"}), "Spacingd mode \"nearest\" is not reproduced"),
        ("zeros", serde_json::json!({"padding_mode": "zeros"}), "Spacingd padding_mode \"zeros\" is not reproduced"),
        ("corners", serde_json::json!({"align_corners": true}), "Spacingd align_corners true is not reproduced"),
        ("pixdim", serde_json::json!({"pixdim": "1.5"}), "Spacingd needs pixdim, a number or a list of numbers"),
    ] {
        let dir = from("basicunet_3d", &format!("spacing-{name}"), &|c: &mut serde_json::Value| {
            insert(c, 2, spacingd(extra.clone()))
        });
        info(&dir, &["preprocessing", expect]);
    }
    let reoriented = from("basicunet_3d", "spacing-orientation", &|c: &mut serde_json::Value| {
        insert(c, 2, spacingd(serde_json::json!({})));
        insert(c, 3, serde_json::json!({"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"}));
    });
    info(
        &reoriented,
        &["preprocessing", "Orientationd after Spacingd is not reproduced (MONAI's zoo reorients first)"],
    );
    // Orientationd: an axis code is applied (info says so), as_closest_canonical as RAS (MONAI ignores
    // axcodes then); a code without one of each pair, no code at all, or other labels are not.
    let orientation = |code: serde_json::Value, extra: serde_json::Value| {
        let mut t = serde_json::json!({"_target_": "Orientationd", "keys": "image", "axcodes": code});
        t.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        t
    };
    let no = serde_json::json!({});
    for (name, transform, expect) in [
        ("lpi", orientation("LPI".into(), no.clone()), Ok("LPI")),
        ("canonical", orientation("LPI".into(), serde_json::json!({"as_closest_canonical": true})), Ok("RAS")),
        (
            "rrs",
            orientation("RRS".into(), no.clone()),
            Err("axis code \"RRS\": expected three letters, one of each pair R/L, A/P, S/I"),
        ),
        ("none", orientation(serde_json::Value::Null, no.clone()), Err("Orientationd without axcodes")),
        (
            "labels",
            orientation("RAS".into(), serde_json::json!({"labels": [["R", "L"], ["A", "P"], ["I", "S"]]})),
            Err("Orientationd labels are not reproduced (MONAI's default pairs L/R, P/A, I/S are)"),
        ),
    ] {
        let dir = from("basicunet_3d", &format!("orientation-{name}"), &|c: &mut serde_json::Value| {
            c["preprocessing"]["transforms"].as_array_mut().unwrap().insert(2, transform.clone())
        });
        match expect {
            Err(expect) => {
                info(&dir, &["preprocessing", expect]);
            }
            Ok(code) => {
                let o = xaiclip(&["info", dir.to_str().unwrap()]);
                assert!(o.status.success(), "{}", stderr(&o));
                let out = String::from_utf8_lossy(&o.stdout);
                assert!(out.contains(&format!("voxels:     reoriented to {code} (as MONAI's Orientationd)")), "{out}");
            }
        }
    }
    let other = case("other", &|c| {
        c["preprocessing"]["transforms"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"_target_": "ThresholdIntensityd", "keys": "image", "threshold": 0}))
    });
    info(&other, &["transform ThresholdIntensity is not supported"]);
    // A SlidingWindowInferer whose blending xaiclip does not reproduce.
    for (key, value, expect) in [
        (
            "mode",
            serde_json::json!("bilinear"),
            "SlidingWindowInferer mode \"bilinear\" is not reproduced (constant or gaussian)",
        ),
        (
            "padding_mode",
            serde_json::json!("replicate"),
            "SlidingWindowInferer padding_mode \"replicate\" is not reproduced",
        ),
        (
            "overlap",
            serde_json::json!([0.5, 0.5, 0.25]),
            "SlidingWindowInferer overlap [0.5,0.5,0.25]: only one number is reproduced",
        ),
    ] {
        let dir = from("basicunet_3d", &format!("inferer-{key}"), &|c: &mut serde_json::Value| {
            c["inferer"][key] = value.clone()
        });
        info(&dir, &["inference.json: inferer", expect]);
    }
    // Per-volume normalisation: in a 2-D bundle, on nonzero voxels only, with arguments xaiclip does not
    // reproduce, or before the window.
    let flat = case("normalize-2d", &|c| {
        insert(c, 3, serde_json::json!({"_target_": "NormalizeIntensityd", "keys": "image"}))
    });
    info(&flat, &["NormalizeIntensityd/ScaleIntensityd in a 2-D bundle are not applied (they would take each slice's statistics)"]);
    for (name, at, transform, expect) in [
        (
            "nonzero",
            3,
            serde_json::json!({"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": true}),
            "NormalizeIntensityd nonzero true is not reproduced",
        ),
        (
            "factor",
            3,
            serde_json::json!({"_target_": "ScaleIntensityd", "keys": "image", "minv": null, "maxv": null, "factor": 0.5}),
            "ScaleIntensityd factor is not reproduced",
        ),
        (
            "divisor",
            3,
            serde_json::json!({"_target_": "NormalizeIntensityd", "keys": "image", "divisor": [2.0]}),
            "NormalizeIntensityd divisor [2.0] is not a number",
        ),
        (
            "before-window",
            2,
            serde_json::json!({"_target_": "NormalizeIntensityd", "keys": "image"}),
            "ScaleIntensityRanged after NormalizeIntensityd/ScaleIntensityd is not reproduced",
        ),
    ] {
        let dir = from("basicunet_3d", &format!("normalize-{name}"), &|c: &mut serde_json::Value| {
            insert(c, at, transform.clone())
        });
        info(&dir, &["preprocessing", expect]);
    }
    let expression = case("expression", &|c| c["num_classes"] = "$len(@labels)".into());
    info(&expression, &["network_def", "\"$len(@labels)\" is a Python expression, which xaiclip does not evaluate"]);
    let dangling = case("dangling", &|c| c["network_def"]["in_channels"] = "@channels".into());
    info(&dangling, &["reference @channels: no such id in the config"]);
    let extra = case("extra", &|c| c["network_def"]["dimensions"] = 2.into());
    info(&extra, &["network_def.dimensions is not a BasicUNet argument"]);
    let corrupt = case("corrupt", &|_| {});
    std::fs::write(corrupt.join("configs/inference.json"), "{\"network_def\": {").unwrap();
    info(&corrupt, &["inference.json: invalid JSON"]);
    let unweighted = case("unweighted", &|_| {});
    std::fs::remove_file(unweighted.join("models/model.pt")).unwrap();
    info(&unweighted, &["no models/model.pt (TorchScript model.ts files are not read)"]);
    let narrow = case("narrow", &|c| c["num_classes"] = 2.into());
    info(&narrow, &["channel_def key \"2\" is not a channel of the 2-class network"]);
}
