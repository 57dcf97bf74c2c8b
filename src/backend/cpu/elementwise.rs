//! The memory-bound passes between the convolutions (instance and group norm, activations, 2x2 max
//! pooling), compiled for AVX-512 and AVX2 beside the baseline and picked at run time: the crate is
//! built for baseline x86-64, where these loops vectorise to 4-lane SSE2 (AMD EPYC Zen 4, batch 16:
//! the four instance norms of 16 x 128² planes 4.0-5.7 -> 2.6-3.7 ms, interleaved runs). Each value is computed by the same operations in
//! the same order in every clone (Rust never contracts a multiply and an add into an FMA), so every
//! clone gives the same bits.

use crate::backend::Activation;
use multiversion::multiversion;
use rayon::prelude::*;

/// What a convolution does to the outputs of each image right after computing them, while they are in
/// cache (a separate pass read them back from memory: bundled U-Net, batch 16, AMD Zen 4, the four
/// instance norms after each conv 43.0 -> 42.4 ms at 128², 178.7 -> 171.4 ms at 256², medians of 8
/// and 4 interleaved runs). Each value gets the operations of the separate pass, so the same bits.
#[derive(Clone, Copy)]
pub(super) enum Epilogue<'a> {
    /// The outputs as computed.
    None,
    /// `act` on every value.
    Activate(Activation),
    /// Instance norm of each output plane (`gamma`, `beta` per output channel; None: 1 and 0), then `act`.
    Norm { gamma: Option<&'a [f32]>, beta: Option<&'a [f32]>, eps: f32, act: Activation },
}

impl Epilogue<'_> {
    /// Applies to `out`, whole images of `cout` planes of `len` values, plane by plane (in parallel or
    /// in order).
    pub(super) fn apply(self, out: &mut [f32], cout: usize, len: usize, in_parallel: bool) {
        let plane = |(i, plane): (usize, &mut [f32])| match self {
            Epilogue::None => {}
            Epilogue::Activate(act) => activate(plane, act),
            Epilogue::Norm { gamma, beta, eps, act } => {
                let c = i % cout;
                normalize_group(plane, len, gamma.map(|g| &g[c..c + 1]), beta.map(|b| &b[c..c + 1]), eps, act)
            }
        };
        match (self, in_parallel) {
            (Epilogue::None | Epilogue::Activate(Activation::Identity), _) => {}
            (_, true) => out.par_chunks_mut(len).enumerate().for_each(plane),
            (_, false) => out.chunks_mut(len).enumerate().for_each(plane),
        }
    }
}

/// Sum of f(v) over a plane: 16 f32 lanes within blocks of 1024 values (vectorised, ~1e-7 relative),
/// blocks added in f64 so a 512x512 plane keeps its digits.
#[inline(always)]
fn lane_sum(plane: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut total = 0f64;
    for block in plane.chunks(1024) {
        let mut lanes = [0f32; 16];
        let mut it = block.chunks_exact(16);
        for c in &mut it {
            for (l, &v) in lanes.iter_mut().zip(c) {
                *l += f(v);
            }
        }
        total +=
            lanes.iter().map(|&l| l as f64).sum::<f64>() + it.remainder().iter().map(|&v| f(v) as f64).sum::<f64>();
    }
    total
}

/// `act(pre(v))` for every value, in place: one loop per activation, since a match per value keeps the
/// compiler from vectorising.
#[inline(always)]
fn map_activated(values: &mut [f32], act: Activation, pre: impl Fn(f32) -> f32) {
    match act {
        Activation::Identity => map(values, pre),
        Activation::Relu => map(values, |v| Activation::Relu.apply(pre(v))),
        Activation::LeakyRelu(slope) => map(values, |v| Activation::LeakyRelu(slope).apply(pre(v))),
        other => map(values, |v| other.apply(pre(v))),
    }
}

/// `f` applied in place (inlined into each clone, where a closure passed on would be compiled alone).
#[inline(always)]
fn map(values: &mut [f32], f: impl Fn(f32) -> f32) {
    for v in values {
        *v = f(*v);
    }
}

/// Normalises one group of planes of `len` values in place to zero mean and unit variance over the
/// group, then `act(v * gamma + beta)` per channel (`gamma`/`beta`: this group's channels, or 1 and 0).
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
pub(super) fn normalize_group(
    group: &mut [f32],
    len: usize,
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    eps: f32,
    act: Activation,
) {
    // Two passes (mean, then squared deviations): planes are up to 512x512 and a one-pass
    // E[x^2] - mean^2 loses the variance when |mean| >> std.
    let mean = lane_sum(group, |v| v) / group.len() as f64;
    let m = mean as f32;
    let var = lane_sum(group, |v| (v - m) * (v - m)) / group.len() as f64;
    let inv = 1.0 / (var + eps as f64).sqrt();
    for (j, plane) in group.chunks_exact_mut(len).enumerate() {
        let g = gamma.map_or(1.0, |g| g[j] as f64);
        let scale = (inv * g) as f32;
        let shift = (beta.map_or(0.0, |b| b[j] as f64) - mean * inv * g) as f32;
        map_activated(plane, act, |v| v * scale + shift);
    }
}

/// `act` applied in place.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
pub(super) fn activate(values: &mut [f32], act: Activation) {
    map_activated(values, act, |v| v);
}

/// 2x2 max pooling of one plane of width `w` into `dst` (rows of `wo`), NaN-ignoring as `f32::max`.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
pub(super) fn max_pool2x2(src: &[f32], w: usize, dst: &mut [f32], wo: usize) {
    for (oy, row) in dst.chunks_exact_mut(wo).enumerate() {
        let (top, bottom) = (&src[2 * oy * w..][..2 * wo], &src[(2 * oy + 1) * w..][..2 * wo]);
        for ((o, a), b) in row.iter_mut().zip(top.chunks_exact(2)).zip(bottom.chunks_exact(2)) {
            *o = f32::NEG_INFINITY.max(a[0]).max(a[1]).max(b[0]).max(b[1]);
        }
    }
}
