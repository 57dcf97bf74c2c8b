//! Per-layer timing of any model: [`Profiled`] wraps a backend, runs every call on it unchanged and
//! records the wall time of each call by operation and shapes (after a `synchronize`, so a GPU's queued
//! work is charged to the call that queued it; profiling therefore serialises a GPU). What
//! `xaiclip profile` prints and benches/peers/forward.py sets beside `torch.profiler`.

use super::perturb::{MaskBatch, Scene, ScoreKind};
use super::{volume, Activation, Backend, PlaneNorm};
use crate::tensor::Tensor;
use anyhow::Result;
use std::sync::Mutex;
use std::time::Instant;

/// The time of one operation at one set of shapes, summed over its calls.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct OpTime {
    /// The `Backend` call (`conv2d_fused`, `instance_norm`, ...).
    pub op: &'static str,
    /// The shapes it was called with, e.g. "16x32x128x128 w 32x32x3x3".
    pub shapes: String,
    /// Number of calls.
    pub calls: usize,
    /// Wall seconds over all calls.
    pub seconds: f64,
    /// Floating-point operations over all calls (convolutions and linear layers; 0 for the rest).
    pub flops: f64,
}

/// A backend that times every call of `inner` (same results, same tensors).
pub struct Profiled<B: Backend> {
    inner: B,
    times: Mutex<Vec<OpTime>>,
}

impl<B: Backend> Profiled<B> {
    /// Wraps `inner`.
    pub fn new(inner: B) -> Self {
        Self { inner, times: Mutex::new(Vec::new()) }
    }

    /// The times recorded so far, in the order each (operation, shapes) was first called, and clears them.
    pub fn take(&self) -> Vec<OpTime> {
        std::mem::take(&mut *self.times.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn dims(&self, t: &B::Tensor) -> String {
        self.inner.shape(t).iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x")
    }

    /// "input w weight" shapes of a layer with weights.
    fn with_weight(&self, x: &B::Tensor, weight: &B::Tensor) -> String {
        format!("{} w {}", self.dims(x), self.dims(weight))
    }

    /// A 2-D convolution over [x, extra] (`op`, "input + skip w weight"), timed with its FLOPs.
    fn conv2d_measured(
        &self,
        op: &'static str,
        [x, weight]: [&B::Tensor; 2],
        extra: Option<&B::Tensor>,
        call: impl FnOnce() -> Result<B::Tensor>,
    ) -> Result<B::Tensor> {
        let skip = extra.map(|e| format!(" + {}", self.dims(e))).unwrap_or_default();
        let shapes = format!("{}{skip} w {}", self.dims(x), self.dims(weight));
        self.measured(op, shapes, call, |y| self.conv_flops(y, weight))
    }

    fn timed<T>(&self, op: &'static str, shapes: String, call: impl FnOnce() -> Result<T>) -> Result<T> {
        self.measured(op, shapes, call, |_| 0.0)
    }

    /// Runs `call`, records its time and `flops(&output)`.
    fn measured<T>(
        &self,
        op: &'static str,
        shapes: String,
        call: impl FnOnce() -> Result<T>,
        flops: impl FnOnce(&T) -> f64,
    ) -> Result<T> {
        let started = Instant::now();
        let out = call()?;
        self.inner.synchronize()?;
        let seconds = started.elapsed().as_secs_f64();
        let flops = flops(&out);
        let mut times = self.times.lock().unwrap_or_else(|e| e.into_inner());
        match times.iter_mut().find(|t| t.op == op && t.shapes == shapes) {
            Some(t) => {
                t.calls += 1;
                t.seconds += seconds;
                t.flops += flops;
            }
            None => times.push(OpTime { op, shapes, calls: 1, seconds, flops }),
        }
        Ok(out)
    }

    /// 2 x multiply-adds of a convolution producing `out` elements from `weight` (Cout, Cin, k...).
    fn conv_flops(&self, out: &B::Tensor, weight: &B::Tensor) -> f64 {
        let (o, w) = (self.inner.shape(out), self.inner.shape(weight));
        let per_output: usize = w[1..].iter().product();
        2.0 * o.iter().product::<usize>() as f64 * per_output as f64
    }

    /// 2 x multiply-adds of a transposed convolution: each input value meets every (Cout, k...) weight of
    /// its channel once (`weight` is (Cin, Cout, k...)).
    fn transposed_flops(&self, x: &B::Tensor, weight: &B::Tensor) -> f64 {
        let per_input: usize = self.inner.shape(weight)[1..].iter().product();
        2.0 * self.inner.shape(x).iter().product::<usize>() as f64 * per_input as f64
    }
}

impl<B: Backend> Backend for Profiled<B> {
    type Tensor = B::Tensor;

    fn name(&self) -> String {
        format!("{} (profiled)", self.inner.name())
    }

    fn upload(&self, t: &Tensor) -> Result<Self::Tensor> {
        self.inner.upload(t)
    }

    fn download(&self, t: &Self::Tensor) -> Result<Tensor> {
        self.inner.download(t)
    }

    fn shape<'a>(&self, t: &'a Self::Tensor) -> &'a [usize] {
        self.inner.shape(t)
    }

    fn reshape(&self, t: Self::Tensor, shape: &[usize]) -> Result<Self::Tensor> {
        self.inner.reshape(t, shape)
    }

    fn memory_available(&self) -> usize {
        self.inner.memory_available()
    }

    fn batch_budget(&self) -> (usize, usize) {
        self.inner.batch_budget()
    }

    fn synchronize(&self) -> Result<()> {
        self.inner.synchronize()
    }

    fn conv2d(
        &self,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        bias: Option<&Self::Tensor>,
        stride: usize,
        pad: usize,
    ) -> Result<Self::Tensor> {
        let shapes = self.with_weight(x, weight);
        self.measured(
            "conv2d",
            shapes,
            || self.inner.conv2d(x, weight, bias, stride, pad),
            |y| self.conv_flops(y, weight),
        )
    }

    fn conv_transpose2d(
        &self,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        bias: Option<&Self::Tensor>,
    ) -> Result<Self::Tensor> {
        let shapes = self.with_weight(x, weight);
        self.measured(
            "conv_transpose2d",
            shapes,
            || self.inner.conv_transpose2d(x, weight, bias),
            |_| self.transposed_flops(x, weight),
        )
    }

    fn group_norm(
        &self,
        x: &mut Self::Tensor,
        groups: usize,
        gamma: Option<&Self::Tensor>,
        beta: Option<&Self::Tensor>,
        eps: f32,
        act: Activation,
    ) -> Result<()> {
        let shapes = self.dims(x);
        self.timed("group_norm", shapes, || self.inner.group_norm(x, groups, gamma, beta, eps, act))
    }

    fn instance_norm(
        &self,
        x: &mut Self::Tensor,
        gamma: Option<&Self::Tensor>,
        beta: Option<&Self::Tensor>,
        eps: f32,
        act: Activation,
    ) -> Result<()> {
        let shapes = self.dims(x);
        self.timed("instance_norm", shapes, || self.inner.instance_norm(x, gamma, beta, eps, act))
    }

    fn activate(&self, x: &mut Self::Tensor, act: Activation) -> Result<()> {
        let shapes = self.dims(x);
        self.timed("activate", shapes, || self.inner.activate(x, act))
    }

    fn conv2d_fused(
        &self,
        x: &Self::Tensor,
        extra: Option<&Self::Tensor>,
        weight: &Self::Tensor,
        bias: Option<&Self::Tensor>,
        pad: usize,
        act: Activation,
    ) -> Result<Self::Tensor> {
        self.conv2d_measured("conv2d_fused", [x, weight], extra, || {
            self.inner.conv2d_fused(x, extra, weight, bias, pad, act)
        })
    }

    fn conv2d_norm(
        &self,
        x: &Self::Tensor,
        extra: Option<&Self::Tensor>,
        weight: &Self::Tensor,
        bias: Option<&Self::Tensor>,
        pad: usize,
        norm: &PlaneNorm<Self::Tensor>,
    ) -> Result<Self::Tensor> {
        self.conv2d_measured("conv2d_norm", [x, weight], extra, || {
            self.inner.conv2d_norm(x, extra, weight, bias, pad, norm)
        })
    }

    fn max_pool2d(&self, x: &Self::Tensor, k: usize) -> Result<Self::Tensor> {
        self.timed("max_pool2d", self.dims(x), || self.inner.max_pool2d(x, k))
    }

    fn upsample_bilinear2x(&self, x: &Self::Tensor) -> Result<Self::Tensor> {
        self.timed("upsample_bilinear2x", self.dims(x), || self.inner.upsample_bilinear2x(x))
    }

    fn pad_replicate_end(&self, x: &Self::Tensor, h: usize, w: usize) -> Result<Self::Tensor> {
        self.timed("pad_replicate_end", self.dims(x), || self.inner.pad_replicate_end(x, h, w))
    }

    fn concat_channels(&self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor> {
        let shapes = format!("{} + {}", self.dims(a), self.dims(b));
        self.timed("concat_channels", shapes, || self.inner.concat_channels(a, b))
    }

    fn softmax_channels(&self, x: &mut Self::Tensor) -> Result<()> {
        let shapes = self.dims(x);
        self.timed("softmax_channels", shapes, || self.inner.softmax_channels(x))
    }

    fn conv3d(
        &self,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        bias: Option<&Self::Tensor>,
        stride: [usize; 3],
        pad: [usize; 3],
    ) -> Result<Self::Tensor> {
        let shapes = self.with_weight(x, weight);
        self.measured(
            "conv3d",
            shapes,
            || self.inner.conv3d(x, weight, bias, stride, pad),
            |y| self.conv_flops(y, weight),
        )
    }

    fn conv_transpose3d(
        &self,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        bias: Option<&Self::Tensor>,
        at: volume::Transposed,
    ) -> Result<Self::Tensor> {
        let shapes = self.with_weight(x, weight);
        self.measured(
            "conv_transpose3d",
            shapes,
            || self.inner.conv_transpose3d(x, weight, bias, at),
            |_| self.transposed_flops(x, weight),
        )
    }

    fn max_pool3d(&self, x: &Self::Tensor, k: [usize; 3]) -> Result<Self::Tensor> {
        self.timed("max_pool3d", self.dims(x), || self.inner.max_pool3d(x, k))
    }

    fn upsample_trilinear(&self, x: &Self::Tensor, size: [usize; 3], align_corners: bool) -> Result<Self::Tensor> {
        self.timed("upsample_trilinear", self.dims(x), || self.inner.upsample_trilinear(x, size, align_corners))
    }

    fn pad_replicate_end3d(&self, x: &Self::Tensor, size: [usize; 3]) -> Result<Self::Tensor> {
        self.timed("pad_replicate_end3d", self.dims(x), || self.inner.pad_replicate_end3d(x, size))
    }

    fn flip3d(&self, x: &Self::Tensor, axes: [bool; 3]) -> Result<Self::Tensor> {
        self.timed("flip3d", self.dims(x), || self.inner.flip3d(x, axes))
    }

    fn linear(&self, x: &Self::Tensor, weight: &Self::Tensor, bias: Option<&Self::Tensor>) -> Result<Self::Tensor> {
        let shapes = self.with_weight(x, weight);
        self.measured("linear", shapes, || self.inner.linear(x, weight, bias), |y| self.conv_flops(y, weight))
    }

    fn layer_norm(
        &self,
        x: &Self::Tensor,
        gamma: &Self::Tensor,
        beta: &Self::Tensor,
        eps: f32,
    ) -> Result<Self::Tensor> {
        self.timed("layer_norm", self.dims(x), || self.inner.layer_norm(x, gamma, beta, eps))
    }

    fn softmax_last(&self, x: &mut Self::Tensor) -> Result<()> {
        let shapes = self.dims(x);
        self.timed("softmax_last", shapes, || self.inner.softmax_last(x))
    }

    fn attention(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        heads: usize,
        causal: bool,
    ) -> Result<Self::Tensor> {
        self.timed("attention", self.dims(q), || self.inner.attention(q, k, v, heads, causal))
    }

    fn add(&self, a: &mut Self::Tensor, b: &Self::Tensor) -> Result<()> {
        let shapes = self.dims(a);
        self.timed("add", shapes, || self.inner.add(a, b))
    }

    fn perturb(
        &self,
        scene: &Scene<Self::Tensor>,
        masks: &MaskBatch,
        first: usize,
        n: usize,
    ) -> Result<(Self::Tensor, Self::Tensor)> {
        self.timed("perturb", format!("{n} images"), || self.inner.perturb(scene, masks, first, n))
    }

    fn segmentation_scores(
        &self,
        logits: &Self::Tensor,
        m0: &Self::Tensor,
        class: usize,
        kind: ScoreKind,
    ) -> Result<Self::Tensor> {
        self.timed("segmentation_scores", self.dims(logits), || self.inner.segmentation_scores(logits, m0, class, kind))
    }

    fn head_scores(
        &self,
        features: &Self::Tensor,
        head: (&Self::Tensor, &Self::Tensor),
        m0: &Self::Tensor,
        class: usize,
        kind: ScoreKind,
    ) -> Result<Self::Tensor> {
        self.timed("head_scores", self.dims(features), || self.inner.head_scores(features, head, m0, class, kind))
    }

    fn accumulate_weighted(&self, acc: &mut Self::Tensor, weights: &Self::Tensor, masks: &Self::Tensor) -> Result<()> {
        let shapes = self.dims(masks);
        self.timed("accumulate_weighted", shapes, || self.inner.accumulate_weighted(acc, weights, masks))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;

    #[test]
    fn profiled_calls_give_the_same_result_and_count_flops() {
        let b = Profiled::new(CpuBackend);
        let x = Tensor::new(&[2, 3, 8, 8], (0..384).map(|v| (v % 7) as f32 - 3.0).collect()).unwrap();
        let w = Tensor::new(&[4, 3, 3, 3], (0..108).map(|v| (v % 5) as f32 * 0.1).collect()).unwrap();
        let want = CpuBackend.conv2d_fused(&x, None, &w, None, 1, Activation::Relu).unwrap();
        for _ in 0..2 {
            assert_eq!(b.conv2d_fused(&x, None, &w, None, 1, Activation::Relu).unwrap(), want);
        }
        b.max_pool2d(&x, 2).unwrap();
        let times = b.take();
        assert_eq!(times.len(), 2);
        assert_eq!((times[0].op, times[0].shapes.as_str(), times[0].calls), ("conv2d_fused", "2x3x8x8 w 4x3x3x3", 2));
        // Two calls of 2 images x 4 channels x 64 pixels x 27 taps, 2 FLOPs each.
        assert_eq!(times[0].flops, 2.0 * 2.0 * (2 * 4 * 64 * 27) as f64);
        assert_eq!((times[1].op, times[1].calls, times[1].flops), ("max_pool2d", 1, 0.0));
        assert!(b.take().is_empty());
    }
}
