//! The 3-D layers of the Backend trait against PyTorch's outputs, saved by
//! tests/fixtures/make_volume_ops_fixtures.py (max |ours - torch| / max |torch| < 1e-4 per case; NaN
//! fails). The CUDA kernels are held to these CPU twins by `xaiclip selftest --device cuda`.

use serde_json::Value;
use std::path::PathBuf;
use xaiclip::backend::volume::Transposed;
use xaiclip::backend::{Activation, Backend, CpuBackend};
use xaiclip::tensor::Tensor;
use xaiclip::weights::WeightsFile;

fn dims(v: &Value) -> [usize; 3] {
    let a: Vec<usize> = v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
    [a[0], a[1], a[2]]
}

fn normalised_error(out: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(out.shape(), want.shape());
    let scale = want.max_abs().max(1e-30) as f64;
    out.data().iter().zip(want.data()).fold(0f64, |m, (&a, &b)| {
        let d = (a as f64 - b as f64).abs();
        if d.is_nan() {
            f64::INFINITY
        } else {
            m.max(d)
        }
    }) / scale
}

#[test]
fn every_3d_op_matches_pytorch() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/volume_ops/io.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let cases: serde_json::Map<String, Value> =
        serde_json::from_str(&meta.metadata().as_ref().unwrap()["cases"]).unwrap();
    let io = WeightsFile::open(&path).unwrap();
    let b = CpuBackend;
    let ops: Vec<&str> = cases.values().map(|c| c["op"].as_str().unwrap()).collect();
    for op in [
        "conv3d",
        "conv_transpose3d",
        "instance_norm_leaky",
        "group_norm_relu",
        "max_pool3d",
        "upsample_trilinear",
        "flip3d",
    ] {
        assert!(ops.contains(&op), "the fixture has no {op} case");
    }
    for (name, case) in &cases {
        let t = |role: &str| io.get(&format!("{name}.{role}")).unwrap();
        let out = match case["op"].as_str().unwrap() {
            "conv3d" => {
                b.conv3d(&t("x"), &t("weight"), Some(&t("bias")), dims(&case["stride"]), dims(&case["pad"])).unwrap()
            }
            "conv_transpose3d" => {
                let at = Transposed {
                    stride: dims(&case["stride"]),
                    pad: dims(&case["pad"]),
                    output_pad: dims(&case["output_pad"]),
                };
                b.conv_transpose3d(&t("x"), &t("weight"), Some(&t("bias")), at).unwrap()
            }
            "instance_norm_leaky" => {
                let mut x = t("x");
                let (eps, slope) = (case["eps"].as_f64().unwrap() as f32, case["slope"].as_f64().unwrap() as f32);
                b.instance_norm(&mut x, Some(&t("gamma")), Some(&t("beta")), eps, Activation::LeakyRelu(slope))
                    .unwrap();
                x
            }
            "group_norm_relu" => {
                let mut x = t("x");
                let (groups, eps) = (case["groups"].as_u64().unwrap() as usize, case["eps"].as_f64().unwrap() as f32);
                b.group_norm(&mut x, groups, Some(&t("gamma")), Some(&t("beta")), eps, Activation::Relu).unwrap();
                x
            }
            "max_pool3d" => b.max_pool3d(&t("x"), dims(&case["k"])).unwrap(),
            "upsample_trilinear" => {
                b.upsample_trilinear(&t("x"), dims(&case["size"]), case["align_corners"].as_bool().unwrap()).unwrap()
            }
            "pad_replicate_end3d" => b.pad_replicate_end3d(&t("x"), dims(&case["size"])).unwrap(),
            "concat_channels" => b.concat_channels(&t("a"), &t("b")).unwrap(),
            "flip3d" => {
                let axes: Vec<bool> = case["axes"].as_array().unwrap().iter().map(|a| a.as_bool().unwrap()).collect();
                b.flip3d(&t("x"), [axes[0], axes[1], axes[2]]).unwrap()
            }
            other => panic!("{name}: unknown op {other}"),
        };
        let err = normalised_error(&out, &t("y"));
        println!("{name}: max error {err:.2e} of max");
        assert!(err < 1e-4, "{name}: max error {err} of the largest value");
    }
}

#[test]
fn bad_3d_shapes_are_refused_with_the_shapes() {
    let b = CpuBackend;
    let x = Tensor::zeros(&[1, 2, 3, 4, 5]);
    let err = b.conv3d(&x, &Tensor::zeros(&[4, 3, 3, 3, 3]), None, [1; 3], [1; 3]).unwrap_err().to_string();
    assert!(err.contains("input has 2 channels, weight expects 3"), "{err}");
    let err = b.conv3d(&x, &Tensor::zeros(&[4, 2, 5, 3, 3]), None, [1; 3], [0; 3]).unwrap_err().to_string();
    assert!(err.contains("larger than the padded input"), "{err}");
    let err = b.max_pool3d(&x, [4, 2, 2]).unwrap_err().to_string();
    assert!(err.contains("window [4, 2, 2] larger than the input [3, 4, 5]"), "{err}");
    let err = b.conv3d(&Tensor::zeros(&[1, 2, 4, 5]), &Tensor::zeros(&[4, 2, 3, 3, 3]), None, [1; 3], [1; 3]);
    assert!(err.unwrap_err().to_string().contains("expected an NCDHW tensor"));
    let err = b.pad_replicate_end3d(&x, [2, 4, 5]).unwrap_err().to_string();
    assert!(err.contains("cannot pad"), "{err}");
}
