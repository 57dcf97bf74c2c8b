//! Turning a continuous map into a mask: shared by the ROI (CLIP map), the agreement metrics
//! (saliency against ground truth) and rendering (colour scaling), so it sits below all three.

/// Saliency rescaled to [0, 1] (all zeros for a constant map).
pub fn min_max(s: &[f32]) -> Vec<f32> {
    let (lo, hi) = s.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    if hi > lo {
        s.iter().map(|v| (v - lo) / (hi - lo)).collect()
    } else {
        vec![0.0; s.len()]
    }
}

/// The k most salient pixels (ties broken by pixel index, so the result is deterministic).
pub fn top_k(s: &[f32], k: usize) -> Vec<bool> {
    let mut order: Vec<usize> = (0..s.len()).collect();
    order.sort_by(|&a, &b| s[b].total_cmp(&s[a]).then(a.cmp(&b)));
    let mut out = vec![false; s.len()];
    order.iter().take(k).for_each(|&q| out[q] = true);
    out
}

/// Otsu's threshold (256 bins) of values in [0, 1].
pub fn otsu(values: &[f32]) -> f32 {
    let mut hist = [0f64; 256];
    for &v in values {
        hist[((v.clamp(0.0, 1.0) * 255.0).round()) as usize] += 1.0;
    }
    let total: f64 = hist.iter().sum();
    let sum_all: f64 = hist.iter().enumerate().map(|(i, h)| i as f64 * h).sum();
    let (mut w0, mut sum0, mut best, mut threshold) = (0.0, 0.0, -1.0, 0usize);
    for (i, h) in hist.iter().enumerate() {
        w0 += h;
        sum0 += i as f64 * h;
        let w1 = total - w0;
        if w0 == 0.0 || w1 == 0.0 {
            continue;
        }
        let between = w0 * w1 * (sum0 / w0 - (sum_all - sum0) / w1).powi(2);
        if between > best {
            best = between;
            threshold = i;
        }
    }
    // Pixels strictly above the bin boundary are foreground.
    (threshold as f32 + 0.5) / 255.0
}
