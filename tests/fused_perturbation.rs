//! The perturbation stage on the backend (mask kernels' CPU twins, scores, saliency sum) against the
//! host path it replaces: the same explanation either way, and the ROI guarantee kept.

use xaiclip::backend::{Backend, CpuBackend, Scene};
use xaiclip::explain::lime::Lime;
use xaiclip::explain::occlusion::Occlusion;
use xaiclip::explain::rise::Rise;
use xaiclip::explain::superpixels::Segments;
use xaiclip::explain::{Cancel, MaskBatch, Problem, Runner, ScoreKind, Scorer, UNetScorer};
use xaiclip::models::{BasicUNet, SegModel, UNetConfig};
use xaiclip::rng::Philox;
use xaiclip::tensor::Tensor;

const SIZE: usize = 32;

fn randoms(n: usize, seed: u64) -> Vec<f32> {
    let r = Philox::new(seed);
    (0..n as u64).map(|i| r.uniform(i)).collect()
}

/// Hides the scorer's fused path: the runner then builds masks and images on the host.
struct HostOnly<'a, S: Scorer>(&'a S);

impl<S: Scorer> Scorer for HostOnly<'_, S> {
    fn scores(&self, images: &Tensor) -> anyhow::Result<Vec<f32>> {
        self.0.scores(images)
    }
}

fn model() -> SegModel<CpuBackend> {
    let config = UNetConfig::from_json(
        r#"{"spatial_dims": 2, "in_channels": 1, "out_channels": 3, "features": [4, 4, 8, 8, 16, 4]}"#,
    )
    .unwrap();
    SegModel::Basic(BasicUNet::random(&CpuBackend, config, 5).unwrap())
}

/// A scorer for the first class the random model predicts somewhere.
fn scorer<'a>(model: &'a SegModel<CpuBackend>, input: &[f32], kind: ScoreKind) -> UNetScorer<'a, CpuBackend> {
    (0..3)
        .find_map(|c| UNetScorer::new(&CpuBackend, model, input, SIZE, c, kind).ok())
        .expect("the model predicts some class")
}

fn max_error(a: &[f32], b: &[f32]) -> f64 {
    let scale = b.iter().fold(0f64, |m, &v| m.max(v.abs() as f64)).max(1e-12);
    a.iter().zip(b).fold(0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs())) / scale
}

#[test]
fn fused_explanations_equal_the_host_path() {
    let model = model();
    let input = randoms(SIZE * SIZE, 1);
    let roi: Vec<bool> = (0..SIZE * SIZE).map(|p| (p % SIZE) > 4 && (p / SIZE) < 27).collect();
    let segments = Segments {
        labels: (0..SIZE * SIZE)
            .map(|p| if roi[p] { ((p % SIZE) / 6 + 6 * ((p / SIZE) / 8)) as i32 } else { -1 })
            .collect(),
        count: 24,
    };
    for kind in [ScoreKind::MeanProb, ScoreKind::SoftDice, ScoreKind::LogitSum] {
        let fused = scorer(&model, &input, kind);
        let host = HostOnly(&fused);
        let run = |s: &dyn Scorer, method: usize| {
            let problem = Problem {
                size: SIZE,
                input: input.clone(),
                baseline: vec![0.1; SIZE * SIZE],
                roi: roi.clone(),
                scorer: s,
                batch: 5,
                cancel: Cancel::default(),
            };
            let mut runner = Runner::new(&problem, |_, _| {});
            match method {
                0 => Occlusion { window: 7, stride: 5 }.explain(&mut runner),
                1 => Rise { masks: 23, grid: 5, p1: 0.5, seed: 3, tol: None }.explain(&mut runner),
                _ => Lime { samples: 40, kernel_width: 0.25, alpha: 1.0, seed: 4 }.explain(&mut runner, &segments),
            }
            .unwrap()
        };
        for method in 0..3 {
            let (a, b) = (run(&fused, method), run(&host, method));
            // Occlusion's unperturbed score: the U-Net scorer's own (found with M0), which the wrapper
            // hides, so the host path runs that forward again.
            assert_eq!(a.forward_passes + usize::from(method == 0), b.forward_passes, "method {method}");
            let e = max_error(&a.saliency, &b.saliency);
            assert!(e < 1e-5, "{kind:?} method {method}: fused vs host {e:e}");
            assert!(a.saliency.iter().any(|&v| v != 0.0), "{kind:?} method {method}: an all-zero map proves nothing");
        }
    }
}

#[test]
fn the_known_unperturbed_score_is_a_fresh_forward_of_that_input_only() {
    let model = model();
    let input = randoms(SIZE * SIZE, 1);
    let s = scorer(&model, &input, ScoreKind::MeanProb);
    let fresh = s.scores(&Tensor::new(&[1, 1, SIZE, SIZE], input.clone()).unwrap()).unwrap()[0];
    assert_eq!(s.known_score(&input).map(f32::to_bits), Some(fresh.to_bits()));
    let mut other = input.clone();
    other[7] += 0.5;
    assert_eq!(s.known_score(&other), None);
}

#[test]
fn perturbed_batches_keep_pixels_outside_the_roi() {
    let plane = SIZE * SIZE;
    let t = |v: Vec<f32>| Tensor::new(&[plane], v).unwrap();
    let roi: Vec<f32> = randoms(plane, 7).iter().map(|&v| (v < 0.6) as u8 as f32).collect();
    let scene = Scene {
        size: SIZE,
        input: t(randoms(plane, 8)),
        baseline: t(randoms(plane, 9)),
        roi: t(roi.clone()),
        labels: None,
    };
    let rise = Rise { masks: 100, grid: 6, p1: 0.5, seed: 1, tol: None };
    let origins = [(3, 4), (20, 25), (0, 0)];
    for masks in
        [MaskBatch::Rise { masks: rise.mask_set(), first: 40 }, MaskBatch::Windows { origins: &origins, window: 9 }]
    {
        let (m, images) = CpuBackend.perturb(&scene, &masks, 0, 3).unwrap();
        let mut expected = vec![0f32; plane];
        for i in 0..3 {
            masks.fill(i, SIZE, None, &mut expected).unwrap();
            for p in 0..plane {
                let (mi, xi) = (m.data()[i * plane + p], images.data()[i * plane + p]);
                if roi[p] == 0.0 {
                    assert_eq!((mi, xi), (1.0, scene.input.data()[p]), "pixel {p} outside the ROI changed");
                } else {
                    assert_eq!(mi, expected[p]);
                    let (x, b) = (scene.input.data()[p], scene.baseline.data()[p]);
                    assert_eq!(xi, b + mi * (x - b));
                }
            }
        }
    }
}

#[test]
fn kahan_sum_on_the_backend_matches_an_f64_sum() {
    let (n, plane) = (300, 64);
    let w = Tensor::new(&[n], randoms(n, 11).iter().map(|v| v * 1000.0).collect()).unwrap();
    let m = Tensor::new(&[n, 1, 8, 8], randoms(n * plane, 12)).unwrap();
    let mut acc = Tensor::zeros(&[2, plane]);
    // Two batches, as the runner adds them.
    let (w1, w2) = (
        Tensor::new(&[200], w.data()[..200].to_vec()).unwrap(),
        Tensor::new(&[100], w.data()[200..].to_vec()).unwrap(),
    );
    let (m1, m2) = (
        Tensor::new(&[200, 1, 8, 8], m.data()[..200 * plane].to_vec()).unwrap(),
        Tensor::new(&[100, 1, 8, 8], m.data()[200 * plane..].to_vec()).unwrap(),
    );
    CpuBackend.accumulate_weighted(&mut acc, &w1, &m1).unwrap();
    CpuBackend.accumulate_weighted(&mut acc, &w2, &m2).unwrap();
    for p in 0..plane {
        let exact: f64 = (0..n).map(|i| w.data()[i] as f64 * m.data()[i * plane + p] as f64).sum();
        assert!((acc.data()[p] as f64 - exact).abs() <= 1e-6 * exact.abs(), "pixel {p}: {} vs {exact}", acc.data()[p]);
    }
}
