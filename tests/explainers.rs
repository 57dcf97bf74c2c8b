//! Exactness of the explainers on models whose attributions are known in closed form, the ROI
//! guarantee, and determinism.

use std::sync::Mutex;
use xaiclip::backend::perturb::keep_outside_roi_and_blend;
use xaiclip::explain::lime::{shapley_regression, weighted_ridge, KernelShap, Lime};
use xaiclip::explain::occlusion::Occlusion;
use xaiclip::explain::rise::Rise;
use xaiclip::explain::superpixels::Segments;
use xaiclip::explain::{Cancel, Problem, Runner, Scorer};
use xaiclip::rng::Philox;
use xaiclip::tensor::Tensor;

/// s(x) = sum_p w_p x_p, and every image it scored.
struct Linear {
    w: Vec<f32>,
    seen: Mutex<Vec<Vec<f32>>>,
}

impl Scorer for Linear {
    fn scores(&self, images: &Tensor) -> anyhow::Result<Vec<f32>> {
        let plane = self.w.len();
        let mut seen = self.seen.lock().unwrap();
        Ok(images
            .data()
            .chunks(plane)
            .map(|img| {
                seen.push(img.to_vec());
                img.iter().zip(&self.w).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() as f32
            })
            .collect())
    }
}

fn randoms(n: usize, seed: u64) -> Vec<f32> {
    let r = Philox::new(seed);
    (0..n as u64).map(|i| r.uniform(i)).collect()
}

fn linear(size: usize) -> Linear {
    Linear { w: randoms(size * size, 1).iter().map(|v| v - 0.3).collect(), seen: Mutex::new(Vec::new()) }
}

fn problem<'a>(size: usize, scorer: &'a dyn Scorer, roi: Vec<bool>) -> Problem<'a> {
    Problem {
        size,
        input: randoms(size * size, 2),
        baseline: vec![0.0; size * size],
        roi,
        scorer,
        batch: 7,
        cancel: Cancel::default(),
    }
}

/// Relative error with the denominator floored at 0.05: scores are f32 sums of O(10), so a score drop
/// carries ~2e-6 absolute rounding however small the drop itself is.
fn close(a: &[f32], b: &[f64], tol: f64) {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((*x as f64 - y).abs() <= tol * y.abs().max(0.05), "pixel {i}: {x} vs {y}");
    }
}

#[test]
fn occlusion_of_a_linear_model_is_the_mean_window_sum() {
    let size = 13;
    let model = linear(size);
    let p = problem(size, &model, vec![true; size * size]);
    for (k, t) in [(1, 1), (3, 2), (4, 3), (5, 5)] {
        let e = Occlusion { window: k, stride: t }.explain(&mut Runner::new(&p, |_, _| {})).unwrap();
        // Captum: origins 0, t, ... while ceil((size - k) / t) + 1 shifts; window clipped at the border.
        let shifts = (size - k).div_ceil(t) + 1;
        let (mut sum, mut count) = (vec![0f64; size * size], vec![0f64; size * size]);
        for oy in (0..shifts).map(|s| s * t) {
            for ox in (0..shifts).map(|s| s * t) {
                let cells: Vec<usize> = (oy..(oy + k).min(size))
                    .flat_map(|y| (ox..(ox + k).min(size)).map(move |x| y * size + x))
                    .collect();
                let drop: f64 = cells.iter().map(|&q| p.input[q] as f64 * model.w[q] as f64).sum();
                cells.iter().for_each(|&q| {
                    sum[q] += drop;
                    count[q] += 1.0;
                });
            }
        }
        let want: Vec<f64> = sum.iter().zip(&count).map(|(s, c)| s / c).collect();
        close(&e.saliency, &want, 1e-4);
        assert_eq!(e.forward_passes, shifts * shifts + 1, "k={k} t={t}");
        if k == 1 {
            close(&e.saliency, &p.input.iter().zip(&model.w).map(|(x, w)| (*x * *w) as f64).collect::<Vec<_>>(), 1e-4);
        }
    }
}

#[test]
fn rise_equals_its_formula_on_the_same_masks() {
    let size = 24;
    let model = linear(size);
    let p = problem(size, &model, vec![true; size * size]);
    let rise = Rise { masks: 40, grid: 5, p1: 0.5, seed: 3, tol: None };
    let e = rise.explain(&mut Runner::new(&p, |_, _| {})).unwrap();
    let mut want = vec![0f64; size * size];
    let mut m = vec![0f32; size * size];
    for i in 0..40 {
        rise.mask_set().mask(i, size, &mut m);
        let s: f64 = (0..size * size).map(|q| (m[q] * p.input[q]) as f64 * model.w[q] as f64).sum();
        for q in 0..size * size {
            want[q] += s * m[q] as f64 / (40.0 * 0.5);
        }
    }
    close(&e.saliency, &want, 1e-4);
    assert_eq!((e.forward_passes, e.samples), (40, 40));
    // Masks are soft, in [0, 1], and about p1 on average.
    let mean: f32 = (0..40)
        .map(|i| {
            rise.mask_set().mask(i, size, &mut m);
            assert!(m.iter().all(|v| (0.0..=1.0).contains(v)));
            m.iter().sum::<f32>() / m.len() as f32
        })
        .sum::<f32>()
        / 40.0;
    assert!((mean - 0.5).abs() < 0.1, "mean mask value {mean}");
}

#[test]
#[allow(clippy::needless_range_loop)] // index loops mirror the textbook elimination
fn ridge_matches_a_direct_solve() {
    let (n, k) = (30, 4);
    let x: Vec<Vec<f64>> = (0..n).map(|i| randoms(k, 10 + i as u64).iter().map(|&v| v as f64).collect()).collect();
    let y: Vec<f64> = randoms(n, 50).iter().map(|&v| v as f64).collect();
    let w: Vec<f64> = randoms(n, 51).iter().map(|&v| 0.1 + v as f64).collect();
    let (b, c) = weighted_ridge(&x, &y, &w, 1.0).unwrap();
    // Direct: minimise sum w (y - c - x b)^2 + |b|^2 over (b, c) by Gaussian elimination of the
    // (k+1) x (k+1) normal equations, intercept unpenalised.
    let dim = k + 1;
    let mut a = vec![vec![0.0; dim + 1]; dim];
    for i in 0..n {
        let row: Vec<f64> = x[i].iter().copied().chain([1.0]).collect();
        for r in 0..dim {
            for s in 0..dim {
                a[r][s] += w[i] * row[r] * row[s];
            }
            a[r][dim] += w[i] * row[r] * y[i];
        }
    }
    for r in 0..k {
        a[r][r] += 1.0;
    }
    for col in 0..dim {
        let piv = (col..dim).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs())).unwrap();
        a.swap(col, piv);
        for r in 0..dim {
            if r != col {
                let f = a[r][col] / a[col][col];
                for s in col..=dim {
                    a[r][s] -= f * a[col][s];
                }
            }
        }
    }
    let direct: Vec<f64> = (0..dim).map(|r| a[r][dim] / a[r][r]).collect();
    for j in 0..k {
        assert!((b[j] - direct[j]).abs() < 1e-9, "coef {j}: {} vs {}", b[j], direct[j]);
    }
    assert!((c - direct[k]).abs() < 1e-9);
}

/// Segments: vertical stripes of width 3 over a size x size grid.
fn stripes(size: usize) -> Segments {
    let labels: Vec<i32> = (0..size * size).map(|q| ((q % size) / 3) as i32).collect();
    Segments { count: size.div_ceil(3), labels }
}

#[test]
fn kernel_shap_recovers_an_additive_model() {
    let size = 15;
    let model = linear(size);
    let p = problem(size, &model, vec![true; size * size]);
    let seg = stripes(size);
    let e = KernelShap { samples: 60, seed: 9 }.explain(&mut Runner::new(&p, |_, _| {}), &seg).unwrap();
    // Linear model, zero baseline: segment j contributes exactly sum_{q in j} w_q x_q when on.
    for j in 0..seg.count as i32 {
        let want: f64 =
            (0..size * size).filter(|&q| seg.labels[q] == j).map(|q| (p.input[q] * model.w[q]) as f64).sum();
        let got = e.saliency[seg.labels.iter().position(|&l| l == j).unwrap()] as f64;
        assert!((got - want).abs() < 1e-4 * want.abs().max(1.0), "segment {j}: {got} vs {want}");
    }
    // Efficiency: attributions sum to f(all on) - f(all off), even with one coalition per feature.
    let rows =
        vec![vec![false, false, false], vec![true, true, true], vec![true, false, false], vec![false, true, true]];
    let phi = shapley_regression(&rows, &[1.0, 4.0, 2.0, 3.0]).unwrap();
    assert!((phi.iter().sum::<f64>() - 3.0).abs() < 1e-9);
}

#[test]
fn samples_that_build_the_same_image_are_scored_once_and_the_maps_keep_their_bits() {
    // Stripes 0 and 1 (columns 0-5) already are the baseline (0.25, not zero): no mask changes them.
    let size = 15;
    let model = linear(size);
    let mut p = problem(size, &model, vec![true; size * size]);
    p.baseline = vec![0.25; size * size];
    (0..size * size).filter(|q| q % size < 6).for_each(|q| p.input[q] = 0.25);
    let seg = stripes(size);
    let image = |mask: &mut Vec<f32>| {
        let mut image = vec![0f32; size * size];
        keep_outside_roi_and_blend(mask, &mut image, &p.input, &p.baseline, |_| true);
        model.scores(&Tensor::new(&[1, 1, size, size], image).unwrap()).unwrap()[0]
    };
    let coalition = |on: &[bool]| image(&mut seg.labels.iter().map(|&l| on[l as usize] as u8 as f32).collect());
    let occlusion = Occlusion { window: 3, stride: 3 };
    let lime = Lime { samples: 40, kernel_width: 0.25, alpha: 1.0, seed: 2 };
    let shap = KernelShap { samples: 60, seed: 3 };
    for method in 0..3 {
        model.seen.lock().unwrap().clear();
        let mut r = Runner::new(&p, |_, _| {});
        // Occlusion: 25 windows, the 10 over columns 0-5 one image, plus the base; LIME and SHAP: 3
        // stripes that change anything, so at most 8 images.
        let (e, most) = match method {
            0 => (occlusion.explain(&mut r).unwrap(), 25 - 9 + 1),
            1 => (lime.explain(&mut r, &seg).unwrap(), 8),
            _ => (shap.explain(&mut r, &seg).unwrap(), 8),
        };
        let seen = std::mem::take(&mut *model.seen.lock().unwrap());
        assert_eq!(seen.len(), e.forward_passes, "method {method}");
        assert!(e.forward_passes <= most && e.samples > most, "method {method}: {} of {}", e.forward_passes, e.samples);
        for (i, a) in seen.iter().enumerate() {
            assert!(seen[..i].iter().all(|b| b != a), "method {method}: image {i} was scored twice");
        }
        // Every sample scored on its own, and the explainer's arithmetic on those scores.
        let want: Vec<f32> = match method {
            0 => {
                let base = image(&mut vec![1.0; size * size]);
                let (mut sum, mut count) = (vec![0f64; size * size], vec![0u32; size * size]);
                for (y0, x0) in occlusion.windows(size, &p.roi) {
                    let cells: Vec<usize> =
                        (y0..y0 + 3).flat_map(|y| (x0..x0 + 3).map(move |x| y * size + x)).collect();
                    let mut mask = vec![1f32; size * size];
                    cells.iter().for_each(|&q| mask[q] = 0.0);
                    let drop = (base - image(&mut mask)) as f64;
                    cells.iter().for_each(|&q| (sum[q], count[q]) = (sum[q] + drop, count[q] + 1));
                }
                sum.iter().zip(&count).map(|(s, &c)| (s / c as f64) as f32).collect()
            }
            _ => {
                let rows = if method == 1 { lime.coalitions(seg.count) } else { shap.coalitions(seg.count) };
                let y: Vec<f64> = rows.iter().map(|on| coalition(on) as f64).collect();
                let c = if method == 1 { lime.fit(&rows, &y).unwrap() } else { shapley_regression(&rows, &y).unwrap() };
                seg.labels.iter().map(|&l| c[l as usize] as f32).collect()
            }
        };
        for (q, (a, b)) in e.saliency.iter().zip(&want).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "method {method}, pixel {q}: {a} vs {b}");
        }
    }
}

#[test]
fn lime_recovers_segment_contributions_of_a_linear_model() {
    let size = 15;
    let model = linear(size);
    let p = problem(size, &model, vec![true; size * size]);
    let seg = stripes(size);
    let lime = Lime { samples: 400, kernel_width: 0.25, alpha: 1e-6, seed: 4 };
    let e = lime.explain(&mut Runner::new(&p, |_, _| {}), &seg).unwrap();
    for j in 0..seg.count as i32 {
        let want: f64 =
            (0..size * size).filter(|&q| seg.labels[q] == j).map(|q| (p.input[q] * model.w[q]) as f64).sum();
        let got = e.saliency[seg.labels.iter().position(|&l| l == j).unwrap()] as f64;
        assert!((got - want).abs() < 1e-3 * want.abs().max(1.0), "segment {j}: {got} vs {want}");
    }
}

#[test]
fn roi_mode_never_touches_a_pixel_outside_the_roi() {
    let size = 20;
    let roi: Vec<bool> =
        (0..size * size).map(|q| (5..12).contains(&(q / size)) && (4..15).contains(&(q % size))).collect();
    let seg = stripes(size);
    for method in 0..4 {
        let model = linear(size);
        let p = problem(size, &model, roi.clone());
        let mut r = Runner::new(&p, |_, _| {});
        let e = match method {
            0 => Occlusion { window: 4, stride: 2 }.explain(&mut r),
            1 => Rise { masks: 30, grid: 4, p1: 0.5, seed: 1, tol: None }.explain(&mut r),
            2 => Lime { samples: 30, kernel_width: 0.25, alpha: 1.0, seed: 1 }.explain(&mut r, &seg),
            _ => KernelShap { samples: 30, seed: 1 }.explain(&mut r, &seg),
        }
        .unwrap();
        let seen = model.seen.lock().unwrap();
        assert_eq!(seen.len(), e.forward_passes, "method {method}: every forward pass is seen");
        let mut perturbed_inside = false;
        for img in seen.iter() {
            for q in 0..size * size {
                if !roi[q] {
                    assert_eq!(
                        img[q].to_bits(),
                        p.input[q].to_bits(),
                        "method {method}: pixel {q} outside the ROI changed"
                    );
                } else if img[q] != p.input[q] {
                    perturbed_inside = true;
                }
            }
        }
        assert!(perturbed_inside, "method {method} perturbed nothing");
    }
    // Occlusion in ROI mode evaluates only windows touching the ROI.
    let all = Occlusion { window: 4, stride: 2 }.windows(size, &vec![true; size * size]).len();
    let some = Occlusion { window: 4, stride: 2 }.windows(size, &roi).len();
    assert!(some < all, "{some} vs {all}");
}

#[test]
fn same_seed_gives_bit_identical_maps() {
    let size = 16;
    let seg = stripes(size);
    let run = |seed: u64, method: usize| {
        let model = linear(size);
        let p = problem(size, &model, vec![true; size * size]);
        let mut r = Runner::new(&p, |_, _| {});
        let e = match method {
            0 => Rise { masks: 25, grid: 4, p1: 0.4, seed, tol: None }.explain(&mut r),
            1 => Lime { samples: 25, kernel_width: 0.25, alpha: 1.0, seed }.explain(&mut r, &seg),
            _ => KernelShap { samples: 25, seed }.explain(&mut r, &seg),
        };
        e.unwrap().saliency.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    };
    for method in 0..3 {
        assert_eq!(run(5, method), run(5, method), "method {method}");
        assert_ne!(run(5, method), run(6, method), "method {method}");
    }
}

#[test]
fn adaptive_rise_stops_early_on_a_converged_map() {
    let size = 12;
    let model = linear(size);
    let p = problem(size, &model, vec![true; size * size]);
    let e = Rise { masks: 4000, grid: 3, p1: 0.5, seed: 2, tol: Some(0.05) }
        .explain(&mut Runner::new(&p, |_, _| {}))
        .unwrap();
    assert!(e.samples < 4000 && e.samples >= 500 && e.samples.is_multiple_of(250), "used {}", e.samples);
    // The history the convergence plot draws: one check per block after the first, every change but the
    // last at or above the tolerance, the last below it.
    let c = e.convergence.expect("adaptive mode records its checks");
    assert_eq!(c.tol, 0.05);
    let masks: Vec<usize> = c.steps.iter().map(|s| s.0).collect();
    assert_eq!(masks, (2..=e.samples / 250).map(|k| 250 * k).collect::<Vec<_>>());
    let (last, before) = c.steps.split_last().unwrap();
    assert!(last.1 < 0.05 && before.iter().all(|s| s.1 >= 0.05 && s.1.is_finite()), "{:?}", c.steps);
    let fixed =
        Rise { masks: 500, grid: 3, p1: 0.5, seed: 2, tol: None }.explain(&mut Runner::new(&p, |_, _| {})).unwrap();
    assert!(fixed.convergence.is_none());
}

#[test]
fn deletion_and_insertion_curves_run_between_input_and_baseline() {
    let size = 10;
    let model = Linear { w: vec![1.0; size * size], seen: Mutex::new(Vec::new()) };
    let p = problem(size, &model, vec![true; size * size]);
    let total: f64 = p.input.iter().map(|&v| v as f64).sum();
    // Saliency = the input itself: deletion removes the largest pixels first, so its curve falls fastest.
    let f = xaiclip::metrics::faithfulness(&mut Runner::new(&p, |_, _| {}), &p.input, 5).unwrap();
    assert!((f.deletion_curve[0] - total).abs() < 1e-3 && f.deletion_curve[5].abs() < 1e-6, "{:?}", f.deletion_curve);
    assert!(
        f.insertion_curve[0].abs() < 1e-6 && (f.insertion_curve[5] - total).abs() < 1e-3,
        "{:?}",
        f.insertion_curve
    );
    assert!(f.deletion_curve.windows(2).all(|w| w[1] <= w[0] + 1e-6));
    let reversed: Vec<f32> = p.input.iter().map(|v| -v).collect();
    let g = xaiclip::metrics::faithfulness(&mut Runner::new(&p, |_, _| {}), &reversed, 5).unwrap();
    assert!(f.deletion_auc < g.deletion_auc && f.insertion_auc > g.insertion_auc);
}

#[test]
fn a_cancelled_run_stops_at_the_next_batch() {
    let size = 24;
    let model = linear(size);
    let p = problem(size, &model, vec![true; size * size]);
    let cancel = p.cancel.clone();
    let rise = Rise { masks: 70, grid: 5, p1: 0.5, seed: 3, tol: None };
    // The progress callback cancels after the first batch of 7; the runner must not start a second.
    let mut calls = 0;
    let err = rise
        .explain(&mut Runner::new(&p, |_, _| {
            calls += 1;
            cancel.cancel();
        }))
        .expect_err("a cancelled run fails");
    assert_eq!(xaiclip::error::kind_of(&err), xaiclip::ErrorKind::Cancelled, "{err:#}");
    assert_eq!(model.seen.lock().unwrap().len(), 7);
    assert_eq!(calls, 1);
    p.cancel.reset();
    assert!(rise.explain(&mut Runner::new(&p, |_, _| {})).is_ok());
}
