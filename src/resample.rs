//! Resampling to a model's spacing as its framework does: nnU-Net's of a case to the plans' spacing and
//! of its logits back (`nnunetv2/preprocessing/resampling/default_resampling.py`,
//! `resample_data_or_seg_to_shape`), and MONAI's `Spacing` ([`monai_shape`], [`monai_linear`]).
//!
//! Its `resize` is scikit-image's: scipy's `zoom` in grid mode (output voxel o samples input coordinate
//! (o + 0.5) n_in / n_out - 0.5), edge extension, no anti-aliasing, the result clipped to the input's
//! range. A B-spline zoom is a tensor product, so it runs one axis at a time here (the same sums in
//! another order, within float64 rounding). An anisotropic case (largest spacing over smallest above 3)
//! is resized slice by slice in plane and then along its low-resolution axis with `order_z`, as nnU-Net
//! does. Arrays are row-major (D, H, W) in the model's axis order; spacings in that order.

use rayon::prelude::*;

/// nnU-Net's `ANISO_THRESHOLD`: a spacing ratio above it resamples the coarse axis on its own.
pub const ANISO_THRESHOLD: f64 = 3.0;

/// Spline orders of one resampling (the plans' `resampling_fn_*_kwargs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Orders {
    /// In plane, or along every axis when the case is not anisotropic: 0, 1 or 3.
    pub order: u8,
    /// Along the low-resolution axis of an anisotropic case: 0 or 1.
    pub order_z: u8,
}

/// How a configuration resamples its input (`resampling_fn_data_kwargs`) and its logits
/// (`resampling_fn_probabilities_kwargs`); the planners' defaults are cubic / linear in plane and
/// nearest along a coarse axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resampling {
    /// The case to the plans' spacing.
    pub data: Orders,
    /// The logits back to the case's spacing.
    pub probabilities: Orders,
}

impl Default for Resampling {
    fn default() -> Self {
        Self { data: Orders { order: 3, order_z: 0 }, probabilities: Orders { order: 1, order_z: 0 } }
    }
}

/// `compute_new_shape`: round(spacing / target * shape) per axis (Python's round, ties to even).
pub fn new_shape(shape: [usize; 3], spacing: [f64; 3], target: [f64; 3]) -> [usize; 3] {
    std::array::from_fn(|a| (spacing[a] / target[a] * shape[a] as f64).round_ties_even() as usize)
}

/// `determine_do_sep_z_and_axis` (force_separate_z None): the axis resampled on its own, if any — the one
/// coarsest axis of the current spacing when it is anisotropic, else of the new one.
pub fn separate_axis(current: [f64; 3], new: [f64; 3]) -> Option<usize> {
    let anisotropic = |s: [f64; 3]| {
        s.iter().copied().fold(f64::MIN, f64::max) / s.iter().copied().fold(f64::MAX, f64::min) > ANISO_THRESHOLD
    };
    let spacing = [current, new].into_iter().find(|&s| anisotropic(s))?;
    let max = spacing.iter().copied().fold(f64::MIN, f64::max);
    // get_lowres_axis: every axis at the largest spacing; two or three of them resample together.
    let coarse: Vec<usize> = (0..3).filter(|&a| max / spacing[a] == 1.0).collect();
    match coarse[..] {
        [axis] => Some(axis),
        _ => None,
    }
}

/// `resample_data_or_seg_to_shape` of one channel (not a segmentation): `data` of `shape` at spacing
/// `current` to `target_shape` at `new`, computed in float64 and returned in float32 as nnU-Net does.
pub fn resample(
    data: &[f32],
    shape: [usize; 3],
    target_shape: [usize; 3],
    current: [f64; 3],
    new: [f64; 3],
    orders: Orders,
) -> Vec<f32> {
    assert_eq!(data.len(), shape.iter().product::<usize>(), "resample: data and shape disagree");
    if shape == target_shape {
        return data.to_vec();
    }
    let data: Vec<f64> = data.iter().map(|&v| v as f64).collect();
    let out = match separate_axis(current, new) {
        None => {
            let (lo, hi) = range(&data);
            let (mut out, _) =
                (0..3).fold((data, shape), |(d, s), a| zoom_axis(&d, s, a, target_shape[a], orders.order));
            out.iter_mut().for_each(|v| *v = v.clamp(lo, hi));
            out
        }
        Some(axis) => {
            // Slice by slice in plane, each clipped to its own input range, then along `axis`.
            let at = |i: usize, shape: [usize; 3]| (i / strides(shape)[axis]) % shape[axis];
            let mut ranges = vec![(f64::INFINITY, f64::NEG_INFINITY); shape[axis]];
            data.iter().enumerate().for_each(|(i, &v)| {
                let r = &mut ranges[at(i, shape)];
                *r = (r.0.min(v), r.1.max(v));
            });
            let (mut d, mut inner) = (data, shape);
            for a in (0..3).filter(|&a| a != axis) {
                (d, inner) = zoom_axis(&d, inner, a, target_shape[a], orders.order);
            }
            d.iter_mut().enumerate().for_each(|(i, v)| {
                let (lo, hi) = ranges[at(i, inner)];
                *v = v.clamp(lo, hi);
            });
            // map_coordinates along the coarse axis, unclipped.
            zoom_axis(&d, inner, axis, target_shape[axis], orders.order_z).0
        }
    };
    out.iter().map(|&v| v as f32).collect()
}

/// MONAI's `AFFINE_TOL`: a spacing within it of the target is kept.
const AFFINE_TOL: f64 = 1e-3;

/// The grid MONAI's `Spacing` (diagonal False, scale_extent False) makes of `shape` at `spacing` for
/// `pixdim` (None: keep the axis): `compute_shape_offset`'s round((n - 1) spacing / pixdim + 1), half to
/// even; an axis within `AFFINE_TOL` of its target keeps its spacing and size. Returns the grid and its
/// spacing.
pub fn monai_shape(shape: [usize; 3], spacing: [f64; 3], pixdim: [Option<f64>; 3]) -> ([usize; 3], [f64; 3]) {
    let target: [f64; 3] = std::array::from_fn(|a| match pixdim[a] {
        Some(p) if (spacing[a] - p).abs() > AFFINE_TOL => p,
        _ => spacing[a],
    });
    let dims = std::array::from_fn(|a| {
        if target[a] == spacing[a] {
            shape[a]
        } else {
            ((shape[a] as f64 - 1.0) * spacing[a] / target[a] + 1.0).round_ties_even() as usize
        }
    });
    (dims, target)
}

/// MONAI's `Spacing` resampling with its defaults (bilinear, border padding, align_corners False, in
/// float64): output voxel o of each axis samples input voxel o * `to` / `from` (the grids share voxel
/// 0's centre), linearly, clamped at the border. Its inverse (`Invertd`) is the same call with the
/// spacings swapped.
pub fn monai_linear(
    data: &[f32],
    shape: [usize; 3],
    target_shape: [usize; 3],
    from: [f64; 3],
    to: [f64; 3],
) -> Vec<f32> {
    assert_eq!(data.len(), shape.iter().product::<usize>(), "resample: data and shape disagree");
    let data: Vec<f64> = data.iter().map(|&v| v as f64).collect();
    let (out, _) = (0..3).fold((data, shape), |(d, s), a| {
        let ratio = to[a] / from[a];
        along_axis(&d, s, a, target_shape[a], |line, out| {
            out.iter_mut().enumerate().for_each(|(o, v)| *v = linear(line, o as f64 * ratio));
        })
    });
    out.iter().map(|&v| v as f32).collect()
}

/// `line` at coordinate `c`, linearly, clamped to its ends.
fn linear(line: &[f64], c: f64) -> f64 {
    let n = line.len() as isize;
    let f = c.floor();
    let t = c - f;
    let at = |i: isize| line[i.clamp(0, n - 1) as usize];
    (1.0 - t) * at(f as isize) + t * at(f as isize + 1)
}

fn range(data: &[f64]) -> (f64, f64) {
    data.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

fn strides(shape: [usize; 3]) -> [usize; 3] {
    [shape[1] * shape[2], shape[2], 1]
}

/// Zooms `axis` of a row-major array to `n_out` samples with a spline of `order`.
fn zoom_axis(data: &[f64], shape: [usize; 3], axis: usize, n_out: usize, order: u8) -> (Vec<f64>, [usize; 3]) {
    along_axis(data, shape, axis, n_out, |line, out| zoom_line(line, out, order))
}

/// Maps every line along `axis` of a row-major array to `n_out` samples with `f(line, out)`; an axis that
/// keeps its size is left as it is.
fn along_axis(
    data: &[f64],
    shape: [usize; 3],
    axis: usize,
    n_out: usize,
    f: impl Fn(&[f64], &mut [f64]) + Sync,
) -> (Vec<f64>, [usize; 3]) {
    let n_in = shape[axis];
    let mut out_shape = shape;
    out_shape[axis] = n_out;
    if n_in == n_out {
        return (data.to_vec(), shape);
    }
    let inner: usize = shape[axis + 1..].iter().product();
    let mut out = vec![0.0; out_shape.iter().product()];
    if out.is_empty() {
        return (out, out_shape);
    }
    out.par_chunks_mut(n_out * inner).zip(data.par_chunks(n_in * inner)).for_each(|(o, d)| {
        let mut line = vec![0.0; n_in];
        let mut zoomed = vec![0.0; n_out];
        for r in 0..inner {
            line.iter_mut().enumerate().for_each(|(i, v)| *v = d[i * inner + r]);
            f(&line, &mut zoomed);
            zoomed.iter().enumerate().for_each(|(j, &v)| o[j * inner + r] = v);
        }
    });
    (out, out_shape)
}

/// Samples each prefilter pads with (scipy's `_prepad_for_spline_filter` for edge mode).
const PAD: usize = 12;

/// One line of scipy's `zoom(grid_mode=True, mode='nearest')`.
fn zoom_line(line: &[f64], out: &mut [f64], order: u8) {
    let (n_in, n_out) = (line.len(), out.len());
    let zoom = n_in as f64 / n_out as f64;
    let at = |o: usize| (o as f64 + 0.5) * zoom - 0.5;
    let clamped = |i: isize, n: usize| i.clamp(0, n as isize - 1) as usize;
    match order {
        0 => out.iter_mut().enumerate().for_each(|(o, v)| *v = line[clamped((at(o) + 0.5).floor() as isize, n_in)]),
        1 => out.iter_mut().enumerate().for_each(|(o, v)| *v = linear(line, at(o))),
        3 => {
            let coefficients = cubic_coefficients(line);
            let n = coefficients.len();
            out.iter_mut().enumerate().for_each(|(o, v)| {
                let c = at(o) + PAD as f64;
                let (f, t) = (c.floor(), c - c.floor());
                let w = [
                    (1.0 - t).powi(3) / 6.0,
                    (4.0 - 6.0 * t * t + 3.0 * t * t * t) / 6.0,
                    (1.0 + 3.0 * t + 3.0 * t * t - 3.0 * t * t * t) / 6.0,
                    t * t * t / 6.0,
                ];
                *v = (0..4).map(|k| w[k] * coefficients[clamped(f as isize - 1 + k as isize, n)]).sum();
            });
        }
        _ => unreachable!("spline order {order} is refused where the plans are read"),
    }
}

/// Cubic B-spline coefficients of `line` padded by its edge values (scipy's `spline_filter`): the causal
/// and anticausal recursions with pole sqrt(3) - 2, started as if the padding went on forever.
fn cubic_coefficients(line: &[f64]) -> Vec<f64> {
    let z = 3f64.sqrt() - 2.0;
    let (first, last) = (line[0], line[line.len() - 1]);
    let mut c: Vec<f64> =
        std::iter::repeat_n(first, PAD).chain(line.iter().copied()).chain(std::iter::repeat_n(last, PAD)).collect();
    let n = c.len();
    c[0] /= 1.0 - z;
    for k in 1..n {
        c[k] += z * c[k - 1];
    }
    // A constant tail x gives c+ = x / (1 - z) and c- = -z c+ / (1 - z).
    c[n - 1] *= -z / (1.0 - z);
    for k in (0..n - 1).rev() {
        c[k] = z * (c[k + 1] - c[k]);
    }
    c.iter_mut().for_each(|v| *v *= 6.0);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cubic_coefficients_interpolate_their_samples() {
        let line: Vec<f64> = (0..20).map(|i| ((i * 7919) % 13) as f64 - 6.0).collect();
        let c = cubic_coefficients(&line);
        for (i, &x) in line.iter().enumerate() {
            let k = i + PAD;
            let back = (c[k - 1] + 4.0 * c[k] + c[k + 1]) / 6.0;
            assert!((back - x).abs() < 1e-9, "{i}: {back} vs {x}");
        }
    }

    #[test]
    fn zooming_keeps_constants_and_lines_and_each_order_picks_its_neighbours() {
        for order in [0, 1, 3] {
            let mut out = vec![0.0; 7];
            zoom_line(&[2.5; 5], &mut out, order);
            assert!(out.iter().all(|&v| (v - 2.5).abs() < 1e-12), "{order}: {out:?}");
        }
        // Halving: output o samples input 2o + 0.5, between samples 2o and 2o + 1.
        let line: Vec<f64> = (0..8).map(|i| i as f64).collect();
        let mut out = vec![0.0; 4];
        zoom_line(&line, &mut out, 1);
        assert_eq!(out, [0.5, 2.5, 4.5, 6.5]);
        zoom_line(&line, &mut out, 0);
        assert_eq!(out, [1.0, 3.0, 5.0, 7.0], "order 0 rounds halves up, as scipy's floor(c + 0.5)");
    }

    #[test]
    fn monai_spacing_keeps_voxel_zero_and_axes_within_its_tolerance() {
        let (dims, spacing) = monai_shape([40, 36, 12], [0.9, 1.5005, 3.0], [Some(1.5), Some(1.5), None]);
        // round(39 x 0.9 / 1.5 + 1) = round(24.4); 1.5005 is within the tolerance of 1.5.
        assert_eq!((dims, spacing), ([24, 36, 12], [1.5, 1.5005, 3.0]));
        let data: Vec<f32> = (0..4).map(|i| i as f32).collect();
        // Output voxel o samples input o x 2 / 3: 0, 2/3, 4/3, 2, 8/3 -> clamped at 3.
        let out = monai_linear(&data, [1, 1, 4], [1, 1, 6], [1.0; 3], [1.0, 1.0, 2.0 / 3.0]);
        let expect = [0.0, 2.0 / 3.0, 4.0 / 3.0, 2.0, 8.0 / 3.0, 3.0];
        assert!(out.iter().zip(expect).all(|(a, b)| (a - b).abs() < 1e-6), "{out:?}");
    }

    #[test]
    fn separate_axis_follows_nnunet() {
        assert_eq!(separate_axis([5.0, 0.8, 0.8], [2.5, 0.8, 0.8]), Some(0));
        assert_eq!(separate_axis([2.0, 1.0, 1.0], [3.5, 0.8, 0.8]), Some(0), "the new spacing when the current is not");
        assert_eq!(separate_axis([1.0, 1.0, 1.0], [2.0, 1.0, 1.5]), None);
        assert_eq!(separate_axis([4.0, 4.0, 1.0], [1.0; 3]), None, "two coarse axes resample together");
        assert_eq!(new_shape([24, 44, 50], [5.0, 0.8, 0.4], [2.5, 0.8, 0.8]), [48, 44, 25]);
    }
}
