//! `xaiclip selftest`: every kernel against a reference on fresh random inputs, then timings.
//!
//! On a GPU the reference is the kernel's CPU twin (the CpuBackend call of the same name). On the CPU the
//! GEMM-based and reduction calls are checked against plain f64 loops, the others (whose CPU code is the
//! reference itself) are only timed. Device outputs start as NaN (poisoned), so an element a kernel never
//! writes fails; NaN never passes.

use crate::backend::cuda::Precision;
use crate::backend::perturb::{MaskBatch, RiseMasks, ScoreKind};
use crate::backend::volume::Transposed;
use crate::backend::{Activation, Backend, CpuBackend, Scene};
use crate::rng::Philox;
use crate::tensor::Tensor;
use anyhow::Result;
use std::time::Instant;

/// Bound on max |out - ref| / max |ref| for a check of this precision.
pub fn error_bound(p: Precision) -> f64 {
    match p {
        Precision::F32 => 1e-5,
        Precision::Tf32 => 5e-3,
        Precision::Bf16 => 2e-2,
    }
}

/// Max |out - ref| / max |ref|; infinite when shapes differ or anything is not finite.
pub fn normalised_error(out: &Tensor, reference: &Tensor) -> f64 {
    if out.shape() != reference.shape() || out.data().iter().chain(reference.data()).any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let scale = reference.data().iter().fold(0f64, |m, &v| m.max(v.abs() as f64)).max(1e-30);
    out.data().iter().zip(reference.data()).fold(0f64, |m, (&a, &b)| m.max((a as f64 - b as f64).abs())) / scale
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Conv { n: usize, cin: usize, extra: usize, cout: usize, hw: usize, k: usize, act: Activation },
    Deconv { n: usize, cin: usize, cout: usize, hw: usize },
    InstanceNorm { n: usize, c: usize, hw: usize },
    MaxPool { n: usize, c: usize, hw: usize },
    Upsample { n: usize, c: usize, hw: usize },
    Pad { n: usize, c: usize, hw: usize },
    SoftmaxChannels { n: usize, c: usize, hw: usize },
    Concat { n: usize, ca: usize, cb: usize, hw: usize },
    Activate { len: usize, act: Activation },
    Add { len: usize },
    Linear { m: usize, k: usize, n: usize },
    LayerNorm { rows: usize, d: usize },
    SoftmaxRows { rows: usize, d: usize },
    Attention { b: usize, l: usize, heads: usize, d: usize, causal: bool },
    RiseMasks { n: usize, size: usize },
    WindowMasks { n: usize, size: usize },
    CoalitionMasks { n: usize, size: usize },
    Scores { n: usize, classes: usize, size: usize, kind: ScoreKind },
    Accumulate { n: usize, size: usize },
    Conv3d { n: usize, cin: usize, cout: usize, dhw: [usize; 3], k: [usize; 3], stride: [usize; 3] },
    Deconv3d { n: usize, cin: usize, cout: usize, dhw: [usize; 3], k: [usize; 3], at: Transposed },
    InstanceNorm3d { n: usize, c: usize, dhw: [usize; 3] },
    GroupNorm3d { n: usize, c: usize, groups: usize, dhw: [usize; 3] },
    MaxPool3d { n: usize, c: usize, dhw: [usize; 3], k: [usize; 3] },
    Trilinear { n: usize, c: usize, dhw: [usize; 3], out: [usize; 3], align: bool },
    Pad3d { n: usize, c: usize, dhw: [usize; 3] },
    Flip3d { n: usize, c: usize, dhw: [usize; 3], axes: [bool; 3] },
    Concat3d { n: usize, ca: usize, cb: usize, dhw: [usize; 3] },
}

/// The shapes checked: the bundled U-Net's layers, the paper-sized U-Net's widest ones, the ViT's.
/// `quick` shrinks images and batches (same channels, odd sizes kept odd) for slow devices such as the
/// kernel emulator of tests/cuda_emulated.rs.
fn ops(quick: bool) -> Vec<Op> {
    let leaky = Activation::LeakyRelu(0.1);
    let all = vec![
        Op::Conv { n: 4, cin: 1, extra: 0, cout: 16, hw: 256, k: 3, act: Activation::Identity },
        Op::Conv { n: 2, cin: 16, extra: 0, cout: 16, hw: 256, k: 3, act: leaky },
        Op::Conv { n: 2, cin: 32, extra: 0, cout: 32, hw: 256, k: 3, act: Activation::Identity },
        Op::Conv { n: 4, cin: 32, extra: 32, cout: 32, hw: 64, k: 3, act: leaky },
        Op::Conv { n: 2, cin: 256, extra: 0, cout: 256, hw: 16, k: 3, act: Activation::Relu },
        Op::Conv { n: 3, cin: 17, extra: 13, cout: 37, hw: 29, k: 3, act: leaky },
        Op::Conv { n: 4, cin: 16, extra: 0, cout: 14, hw: 256, k: 1, act: Activation::Identity },
        Op::Deconv { n: 4, cin: 32, cout: 16, hw: 128 },
        Op::InstanceNorm { n: 4, c: 16, hw: 256 },
        Op::MaxPool { n: 4, c: 16, hw: 256 },
        Op::Upsample { n: 4, c: 16, hw: 64 },
        Op::Pad { n: 4, c: 16, hw: 31 },
        Op::SoftmaxChannels { n: 4, c: 14, hw: 256 },
        Op::Concat { n: 4, ca: 16, cb: 16, hw: 256 },
        Op::Activate { len: 197 * 4 * 512, act: Activation::QuickGelu },
        Op::Activate { len: 197 * 4 * 512, act: Activation::Gelu },
        Op::Add { len: 197 * 4 * 128 },
        Op::Linear { m: 197 * 4, k: 128, n: 384 },
        Op::Linear { m: 77, k: 96, n: 97 },
        Op::LayerNorm { rows: 197 * 4, d: 128 },
        Op::SoftmaxRows { rows: 197 * 4, d: 197 },
        Op::Attention { b: 4, l: 197, heads: 4, d: 32, causal: false },
        Op::Attention { b: 2, l: 77, heads: 4, d: 24, causal: true },
        Op::Attention { b: 1, l: 50, heads: 1, d: 128, causal: false },
        Op::RiseMasks { n: 16, size: 256 },
        Op::WindowMasks { n: 16, size: 256 },
        Op::CoalitionMasks { n: 16, size: 256 },
        Op::Scores { n: 16, classes: 14, size: 256, kind: ScoreKind::MeanProb },
        Op::Scores { n: 16, classes: 14, size: 256, kind: ScoreKind::SoftDice },
        Op::Scores { n: 16, classes: 14, size: 256, kind: ScoreKind::Dice },
        Op::Accumulate { n: 16, size: 256 },
        // Volumetric U-Nets: MONAI BasicUNet 3-D layers and nnU-Net 3d_fullres's anisotropic ones.
        Op::Conv3d { n: 2, cin: 1, cout: 16, dhw: [24, 40, 40], k: [3, 3, 3], stride: [1, 1, 1] },
        Op::Conv3d { n: 1, cin: 16, cout: 16, dhw: [24, 40, 40], k: [3, 3, 3], stride: [1, 1, 1] },
        Op::Conv3d { n: 1, cin: 32, cout: 64, dhw: [10, 20, 20], k: [3, 3, 3], stride: [2, 2, 2] },
        Op::Conv3d { n: 2, cin: 8, cout: 24, dhw: [7, 33, 31], k: [1, 3, 3], stride: [1, 2, 2] },
        Op::Conv3d { n: 2, cin: 16, cout: 14, dhw: [16, 24, 24], k: [1, 1, 1], stride: [1, 1, 1] },
        Op::Deconv3d { n: 2, cin: 32, cout: 16, dhw: [8, 16, 16], k: [2, 2, 2], at: Transposed::kernel_stride([2; 3]) },
        Op::Deconv3d {
            n: 1,
            cin: 16,
            cout: 8,
            dhw: [5, 9, 11],
            k: [1, 2, 2],
            at: Transposed::kernel_stride([1, 2, 2]),
        },
        // MONAI UNet's upsampling: kernel 3, stride 2, padding 1, output padding 1 (overlapping taps), and
        // its 2-D form as one-slice volumes.
        Op::Deconv3d {
            n: 2,
            cin: 32,
            cout: 16,
            dhw: [8, 15, 16],
            k: [3; 3],
            at: Transposed { stride: [2; 3], pad: [1; 3], output_pad: [1; 3] },
        },
        Op::Deconv3d {
            n: 2,
            cin: 16,
            cout: 8,
            dhw: [1, 33, 32],
            k: [1, 3, 3],
            at: Transposed { stride: [1, 2, 2], pad: [0, 1, 1], output_pad: [0, 1, 1] },
        },
        Op::InstanceNorm3d { n: 2, c: 16, dhw: [24, 40, 40] },
        // SegResNet's group norm (8 groups) and a 2-D one as one-slice volumes.
        Op::GroupNorm3d { n: 2, c: 32, groups: 8, dhw: [12, 20, 20] },
        Op::GroupNorm3d { n: 3, c: 12, groups: 3, dhw: [1, 33, 31] },
        Op::MaxPool3d { n: 2, c: 16, dhw: [24, 41, 40], k: [2, 2, 2] },
        Op::MaxPool3d { n: 1, c: 8, dhw: [7, 20, 21], k: [1, 2, 2] },
        Op::Trilinear { n: 2, c: 16, dhw: [8, 20, 20], out: [16, 40, 40], align: true },
        Op::Trilinear { n: 1, c: 8, dhw: [7, 10, 9], out: [14, 20, 18], align: false },
        Op::Pad3d { n: 2, c: 16, dhw: [7, 19, 20] },
        // nnU-Net's mirroring: a 2-D network's slices as one-slice volumes, and all three axes.
        Op::Flip3d { n: 3, c: 1, dhw: [1, 33, 31], axes: [false, true, true] },
        Op::Flip3d { n: 2, c: 14, dhw: [7, 19, 20], axes: [true, false, true] },
        Op::Concat3d { n: 2, ca: 16, cb: 16, dhw: [12, 20, 20] },
    ];
    if !quick {
        return all;
    }
    let side = |v: usize| if v > 32 { v / 8 + v % 2 } else { v };
    let few = |n: usize| n.min(3);
    // Volumes: every axis above 8 to about a third, odd sizes kept odd.
    let vol = |d: [usize; 3]| d.map(|v| if v > 8 { v / 3 + v % 2 } else { v });
    all.into_iter()
        .map(|op| match op {
            Op::Conv { n, cin, extra, cout, hw, k, act } => {
                Op::Conv { n: few(n), cin, extra, cout, hw: side(hw), k, act }
            }
            Op::Deconv { n, cin, cout, hw } => Op::Deconv { n: few(n), cin, cout, hw: side(hw) },
            Op::InstanceNorm { n, c, hw } => Op::InstanceNorm { n: few(n), c, hw: side(hw) },
            Op::MaxPool { n, c, hw } => Op::MaxPool { n: few(n), c, hw: side(hw) },
            Op::Upsample { n, c, hw } => Op::Upsample { n: few(n), c, hw: side(hw) },
            Op::Pad { n, c, hw } => Op::Pad { n: few(n), c, hw: side(hw) },
            Op::SoftmaxChannels { n, c, hw } => Op::SoftmaxChannels { n: few(n), c, hw: side(hw) },
            Op::Concat { n, ca, cb, hw } => Op::Concat { n: few(n), ca, cb, hw: side(hw) },
            Op::Activate { len, act } => Op::Activate { len: side(len), act },
            Op::Add { len } => Op::Add { len: side(len) },
            Op::Linear { m, k, n } => Op::Linear { m: side(m), k, n },
            Op::LayerNorm { rows, d } => Op::LayerNorm { rows: side(rows), d },
            Op::SoftmaxRows { rows, d } => Op::SoftmaxRows { rows: side(rows), d },
            Op::Attention { b, l, heads, d, causal } => Op::Attention { b: few(b), l: side(l), heads, d, causal },
            Op::RiseMasks { n, size } => Op::RiseMasks { n: few(n), size: side(size) },
            Op::WindowMasks { n, size } => Op::WindowMasks { n: few(n), size: side(size) },
            Op::CoalitionMasks { n, size } => Op::CoalitionMasks { n: few(n), size: side(size) },
            Op::Scores { n, classes, size, kind } => Op::Scores { n: few(n), classes, size: side(size), kind },
            Op::Accumulate { n, size } => Op::Accumulate { n: few(n), size: side(size) },
            Op::Conv3d { n, cin, cout, dhw, k, stride } => {
                Op::Conv3d { n: few(n), cin, cout, dhw: vol(dhw), k, stride }
            }
            Op::Deconv3d { n, cin, cout, dhw, k, at } => Op::Deconv3d { n: few(n), cin, cout, dhw: vol(dhw), k, at },
            Op::InstanceNorm3d { n, c, dhw } => Op::InstanceNorm3d { n: few(n), c, dhw: vol(dhw) },
            Op::GroupNorm3d { n, c, groups, dhw } => Op::GroupNorm3d { n: few(n), c, groups, dhw: vol(dhw) },
            Op::MaxPool3d { n, c, dhw, k } => Op::MaxPool3d { n: few(n), c, dhw: vol(dhw), k },
            Op::Trilinear { n, c, dhw, align, .. } => {
                Op::Trilinear { n: few(n), c, dhw: vol(dhw), out: vol(dhw).map(|v| 2 * v), align }
            }
            Op::Pad3d { n, c, dhw } => Op::Pad3d { n: few(n), c, dhw: vol(dhw) },
            Op::Flip3d { n, c, dhw, axes } => Op::Flip3d { n: few(n), c, dhw: vol(dhw), axes },
            Op::Concat3d { n, ca, cb, dhw } => Op::Concat3d { n: few(n), ca, cb, dhw: vol(dhw) },
        })
        .collect()
}

fn random(rng: &Philox, stream: u64, shape: &[usize], lo: f32, hi: f32) -> Tensor {
    let r = rng.stream(stream);
    let len = shape.iter().product::<usize>();
    Tensor::new(shape, (0..len).map(|i| lo + (hi - lo) * r.uniform(i as u64)).collect()).expect("shape matches data")
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Conv { extra: 0, k: 1, .. } => "conv2d 1x1",
            Op::Conv { extra: 0, .. } => "conv2d 3x3",
            Op::Conv { .. } => "conv2d 3x3 [skip, up]",
            Op::Deconv { .. } => "conv_transpose2x2",
            Op::InstanceNorm { .. } => "group_norm_act (instance)",
            Op::MaxPool { .. } => "max_pool2d",
            Op::Upsample { .. } => "upsample_bilinear2x",
            Op::Pad { .. } => "pad_replicate_end",
            Op::SoftmaxChannels { .. } => "softmax_channels",
            Op::Concat { .. } => "concat_channels",
            Op::Activate { .. } => "activate_inplace",
            Op::Add { .. } => "add_inplace",
            Op::Linear { .. } => "linear_f32",
            Op::LayerNorm { .. } => "layer_norm_rows",
            Op::SoftmaxRows { .. } => "softmax_rows",
            Op::Attention { .. } => "attention_f32",
            Op::RiseMasks { .. } => "rise_masks + perturb",
            Op::WindowMasks { .. } => "window_masks + perturb",
            Op::CoalitionMasks { .. } => "coalition_masks + perturb",
            Op::Scores { .. } => "segmentation_scores",
            Op::Accumulate { .. } => "accumulate_weighted",
            Op::Conv3d { k: [1, 1, 1], .. } => "conv3d 1x1x1",
            Op::Conv3d { k: [1, _, _], .. } => "conv3d 1x3x3",
            Op::Conv3d { .. } => "conv3d 3x3x3",
            Op::Deconv3d { .. } => "conv_transpose3d",
            Op::InstanceNorm3d { .. } => "group_norm_act (instance) 3-D",
            Op::GroupNorm3d { .. } => "group_norm_act 3-D",
            Op::MaxPool3d { .. } => "max_pool3d",
            Op::Trilinear { .. } => "upsample_trilinear",
            Op::Pad3d { .. } => "pad_replicate_end3d",
            Op::Flip3d { .. } => "flip3d",
            Op::Concat3d { .. } => "concat_channels 3-D",
        }
    }

    fn shape(&self) -> String {
        match *self {
            Op::Conv { n, cin, extra, cout, hw, act, .. } => format!(
                "{n}x{}{}->{cout} @{hw}{}",
                cin,
                if extra > 0 { format!("+{extra}") } else { String::new() },
                if act == Activation::Identity { String::new() } else { format!(" {act:?}") }
            ),
            Op::Deconv { n, cin, cout, hw } => format!("{n}x{cin}->{cout} @{hw}"),
            Op::InstanceNorm { n, c, hw }
            | Op::MaxPool { n, c, hw }
            | Op::Upsample { n, c, hw }
            | Op::Pad { n, c, hw }
            | Op::SoftmaxChannels { n, c, hw } => format!("{n}x{c} @{hw}"),
            Op::Concat { n, ca, cb, hw } => format!("{n}x({ca}+{cb}) @{hw}"),
            Op::Activate { len, act } => format!("{len} {act:?}"),
            Op::Add { len } => format!("{len}"),
            Op::Linear { m, k, n } => format!("{m}x{k} * {k}x{n}"),
            Op::LayerNorm { rows, d } | Op::SoftmaxRows { rows, d } => format!("{rows} rows x {d}"),
            Op::Attention { b, l, heads, d, causal } => {
                format!("{b}x{l} {heads}x{d}{}", if causal { " causal" } else { "" })
            }
            Op::RiseMasks { n, size }
            | Op::WindowMasks { n, size }
            | Op::CoalitionMasks { n, size }
            | Op::Accumulate { n, size } => format!("{n} @{size}"),
            Op::Scores { n, classes, size, kind } => format!("{n}x{classes} @{size} {kind:?}"),
            Op::Conv3d { n, cin, cout, dhw, stride, .. } => {
                let s = if stride == [1; 3] { String::new() } else { format!(" stride {stride:?}") };
                format!("{n}x{cin}->{cout} @{dhw:?}{s}")
            }
            Op::Deconv3d { n, cin, cout, dhw, k, at } => {
                format!("{n}x{cin}->{cout} @{dhw:?} k {k:?} s {:?} p {:?} op {:?}", at.stride, at.pad, at.output_pad)
            }
            Op::InstanceNorm3d { n, c, dhw } | Op::Pad3d { n, c, dhw } => format!("{n}x{c} @{dhw:?}"),
            Op::GroupNorm3d { n, c, groups, dhw } => format!("{n}x{c} in {groups} groups @{dhw:?}"),
            Op::Flip3d { n, c, dhw, axes } => format!("{n}x{c} @{dhw:?} along {axes:?}"),
            Op::MaxPool3d { n, c, dhw, k } => format!("{n}x{c} @{dhw:?} k {k:?}"),
            Op::Trilinear { n, c, dhw, out, align } => format!("{n}x{c} @{dhw:?} -> {out:?} align_corners {align}"),
            Op::Concat3d { n, ca, cb, dhw } => format!("{n}x({ca}+{cb}) @{dhw:?}"),
        }
    }

    /// Whether the op runs on the tensor cores at the backend's precision (the others are f32).
    fn uses_precision(&self) -> bool {
        matches!(self, Op::Conv { .. })
    }

    fn inputs(&self, seed: u64) -> Vec<Tensor> {
        let rng = Philox::new(seed);
        let r = |s: u64, shape: &[usize]| random(&rng, s, shape, -1.0, 1.0);
        match *self {
            Op::Conv { n, cin, extra, cout, hw, k, .. } => {
                let mut t = vec![r(0, &[n, cin, hw, hw]), r(1, &[cout, cin + extra, k, k]), r(2, &[cout])];
                if extra > 0 {
                    t.push(r(3, &[n, extra, hw, hw]));
                }
                t
            }
            Op::Deconv { n, cin, cout, hw } => vec![r(0, &[n, cin, hw, hw]), r(1, &[cin, cout, 2, 2]), r(2, &[cout])],
            Op::InstanceNorm { n, c, hw } => vec![random(&rng, 0, &[n, c, hw, hw], 3.0, 5.0), r(1, &[c]), r(2, &[c])],
            Op::MaxPool { n, c, hw }
            | Op::Upsample { n, c, hw }
            | Op::Pad { n, c, hw }
            | Op::SoftmaxChannels { n, c, hw } => vec![random(&rng, 0, &[n, c, hw, hw], -4.0, 4.0)],
            Op::Concat { n, ca, cb, hw } => vec![r(0, &[n, ca, hw, hw]), r(1, &[n, cb, hw, hw])],
            Op::Activate { len, .. } => vec![random(&rng, 0, &[len], -6.0, 6.0)],
            Op::Add { len } => vec![r(0, &[len]), r(1, &[len])],
            Op::Linear { m, k, n } => vec![r(0, &[m, k]), r(1, &[n, k]), r(2, &[n])],
            Op::LayerNorm { rows, d } => vec![random(&rng, 0, &[rows, d], -2.0, 6.0), r(1, &[d]), r(2, &[d])],
            Op::SoftmaxRows { rows, d } => vec![random(&rng, 0, &[rows, d], -8.0, 8.0)],
            Op::Attention { b, l, heads, d, .. } => {
                (0..3).map(|s| random(&rng, s, &[b, l, heads * d], -2.0, 2.0)).collect()
            }
            Op::RiseMasks { size, .. } | Op::WindowMasks { size, .. } | Op::CoalitionMasks { size, .. } => {
                let roi =
                    random(&rng, 2, &[size * size], 0.0, 1.0).data().iter().map(|&v| (v < 0.7) as u8 as f32).collect();
                let labels = random(&rng, 3, &[size * size], -0.1, 40.0)
                    .data()
                    .iter()
                    .map(|&v| if v < 0.0 { -1.0 } else { v.floor() })
                    .collect();
                vec![
                    r(0, &[size * size]),
                    r(1, &[size * size]),
                    Tensor::new(&[size * size], roi).expect("plane"),
                    Tensor::new(&[size * size], labels).expect("plane"),
                ]
            }
            Op::Scores { n, classes, size, .. } => {
                let m0 =
                    random(&rng, 1, &[size * size], 0.0, 1.0).data().iter().map(|&v| (v < 0.3) as u8 as f32).collect();
                vec![
                    random(&rng, 0, &[n, classes, size, size], -6.0, 6.0),
                    Tensor::new(&[size * size], m0).expect("plane"),
                ]
            }
            Op::Accumulate { n, size } => {
                vec![r(0, &[2, size * size]), r(1, &[n]), random(&rng, 2, &[n, 1, size, size], 0.0, 1.0)]
            }
            Op::Conv3d { n, cin, cout, dhw: [d, h, w], k: [kd, kh, kw], .. } => {
                vec![r(0, &[n, cin, d, h, w]), r(1, &[cout, cin, kd, kh, kw]), r(2, &[cout])]
            }
            Op::Deconv3d { n, cin, cout, dhw: [d, h, w], k: [kd, kh, kw], .. } => {
                vec![r(0, &[n, cin, d, h, w]), r(1, &[cin, cout, kd, kh, kw]), r(2, &[cout])]
            }
            Op::InstanceNorm3d { n, c, dhw: [d, h, w] } | Op::GroupNorm3d { n, c, dhw: [d, h, w], .. } => {
                vec![random(&rng, 0, &[n, c, d, h, w], 3.0, 5.0), r(1, &[c]), r(2, &[c])]
            }
            Op::MaxPool3d { n, c, dhw: [d, h, w], .. }
            | Op::Trilinear { n, c, dhw: [d, h, w], .. }
            | Op::Pad3d { n, c, dhw: [d, h, w] }
            | Op::Flip3d { n, c, dhw: [d, h, w], .. } => vec![random(&rng, 0, &[n, c, d, h, w], -4.0, 4.0)],
            Op::Concat3d { n, ca, cb, dhw: [d, h, w] } => vec![r(0, &[n, ca, d, h, w]), r(1, &[n, cb, d, h, w])],
        }
    }

    fn apply<B: Backend>(&self, b: &B, t: &[B::Tensor], seed: u64) -> Result<B::Tensor> {
        match *self {
            Op::Conv { k, act, .. } => b.conv2d_fused(&t[0], t.get(3), &t[1], Some(&t[2]), k / 2, act),
            Op::Deconv { .. } => b.conv_transpose2d(&t[0], &t[1], Some(&t[2])),
            Op::InstanceNorm { .. } | Op::InstanceNorm3d { .. } => {
                let mut x = t[0].clone();
                b.instance_norm(&mut x, Some(&t[1]), Some(&t[2]), 1e-5, Activation::LeakyRelu(0.1))?;
                Ok(x)
            }
            Op::GroupNorm3d { groups, .. } => {
                let mut x = t[0].clone();
                b.group_norm(&mut x, groups, Some(&t[1]), Some(&t[2]), 1e-5, Activation::Relu)?;
                Ok(x)
            }
            Op::MaxPool { .. } => b.max_pool2d(&t[0], 2),
            Op::Upsample { .. } => b.upsample_bilinear2x(&t[0]),
            Op::Pad { hw, .. } => b.pad_replicate_end(&t[0], hw + 1, hw + 2),
            Op::SoftmaxChannels { .. } => {
                let mut x = t[0].clone();
                b.softmax_channels(&mut x)?;
                Ok(x)
            }
            Op::Concat { .. } => b.concat_channels(&t[0], &t[1]),
            Op::Activate { act, .. } => {
                let mut x = t[0].clone();
                b.activate(&mut x, act)?;
                Ok(x)
            }
            Op::Add { .. } => {
                let mut x = t[0].clone();
                b.add(&mut x, &t[1])?;
                Ok(x)
            }
            Op::Linear { .. } => b.linear(&t[0], &t[1], Some(&t[2])),
            Op::LayerNorm { .. } => b.layer_norm(&t[0], &t[1], &t[2], 1e-5),
            Op::SoftmaxRows { .. } => {
                let mut x = t[0].clone();
                b.softmax_last(&mut x)?;
                Ok(x)
            }
            Op::Attention { heads, causal, .. } => b.attention(&t[0], &t[1], &t[2], heads, causal),
            Op::RiseMasks { n, size } | Op::WindowMasks { n, size } | Op::CoalitionMasks { n, size } => {
                let scene = Scene {
                    size,
                    input: t[0].clone(),
                    baseline: t[1].clone(),
                    roi: t[2].clone(),
                    labels: Some(t[3].clone()),
                };
                let rise = RiseMasks { grid: 7, p1: 0.5, seed };
                let rng = Philox::new(seed);
                let origins: Vec<(usize, usize)> = (0..n)
                    .map(|i| ((rng.word(2 * i as u64) as usize) % size, (rng.word(2 * i as u64 + 1) as usize) % size))
                    .collect();
                let rows: Vec<Vec<bool>> =
                    (0..n).map(|i| (0..40).map(|j| rng.stream(1 + i as u64).word(j) & 1 == 1).collect()).collect();
                // The backends read the superpixel map from the scene (t[3], on the device); the host-side
                // copy in MaskBatch only seeds scenes, so none is needed here.
                let labels: Vec<i32> = Vec::new();
                let masks = match self {
                    Op::RiseMasks { .. } => MaskBatch::Rise { masks: rise, first: 1000 },
                    Op::WindowMasks { .. } => MaskBatch::Windows { origins: &origins, window: 37 },
                    _ => MaskBatch::Coalitions { rows: &rows, labels: &labels },
                };
                Ok(b.perturb(&scene, &masks, 0, n)?.1)
            }
            Op::Scores { kind, .. } => b.segmentation_scores(&t[0], &t[1], 3, kind),
            Op::Accumulate { .. } => {
                let mut acc = t[0].clone();
                b.accumulate_weighted(&mut acc, &t[1], &t[2])?;
                Ok(acc)
            }
            Op::Conv3d { k, stride, .. } => b.conv3d(&t[0], &t[1], Some(&t[2]), stride, k.map(|v| v / 2)),
            Op::Deconv3d { at, .. } => b.conv_transpose3d(&t[0], &t[1], Some(&t[2]), at),
            Op::MaxPool3d { k, .. } => b.max_pool3d(&t[0], k),
            Op::Trilinear { out, align, .. } => b.upsample_trilinear(&t[0], out, align),
            Op::Pad3d { dhw: [d, h, w], .. } => b.pad_replicate_end3d(&t[0], [d + 1, h + 1, w + 2]),
            Op::Flip3d { axes, .. } => b.flip3d(&t[0], axes),
            Op::Concat3d { .. } => b.concat_channels(&t[0], &t[1]),
        }
    }

    /// (floating-point operations, bytes that must move) of one call.
    fn cost(&self) -> (f64, f64) {
        let f = |v: usize| v as f64;
        match *self {
            Op::Conv { n, cin, extra, cout, hw, k, .. } => {
                let (pix, kdim) = (f(n * hw * hw), f((cin + extra) * k * k));
                (2.0 * pix * kdim * f(cout), 4.0 * (pix * f(cin + extra + cout) + kdim * f(cout)))
            }
            Op::Deconv { n, cin, cout, hw } => {
                (2.0 * f(n * hw * hw * cin * cout * 4), 4.0 * f(n * hw * hw * (cin + 4 * cout)))
            }
            Op::InstanceNorm { n, c, hw } | Op::SoftmaxChannels { n, c, hw } => (0.0, 8.0 * f(n * c * hw * hw)),
            Op::MaxPool { n, c, hw } => (0.0, 5.0 * f(n * c * hw * hw)),
            Op::Upsample { n, c, hw } => (0.0, 20.0 * f(n * c * hw * hw)),
            Op::Pad { n, c, hw } => (0.0, 8.0 * f(n * c * (hw + 1) * (hw + 2))),
            Op::Concat { n, ca, cb, hw } => (0.0, 8.0 * f(n * (ca + cb) * hw * hw)),
            Op::Activate { len, .. } => (0.0, 8.0 * f(len)),
            Op::Add { len } => (0.0, 12.0 * f(len)),
            Op::Linear { m, k, n } => (2.0 * f(m * k * n), 4.0 * f(m * k + k * n + m * n)),
            Op::LayerNorm { rows, d } | Op::SoftmaxRows { rows, d } => (0.0, 8.0 * f(rows * d)),
            Op::Attention { b, l, heads, d, .. } => (4.0 * f(b * heads * l * l * d), 16.0 * f(b * l * heads * d)),
            Op::RiseMasks { n, size } | Op::WindowMasks { n, size } | Op::CoalitionMasks { n, size } => {
                (0.0, 8.0 * f(n * size * size) + 12.0 * f(size * size))
            }
            Op::Scores { n, classes, size, .. } => (0.0, 4.0 * f(n * classes * size * size)),
            Op::Accumulate { n, size } => (0.0, 4.0 * f(n * size * size + 4 * size * size)),
            Op::Conv3d { n, cin, cout, dhw, k, stride } => {
                let out: usize = (0..3).map(|a| (dhw[a] + 2 * (k[a] / 2) - k[a]) / stride[a] + 1).product();
                let (vox, kdim) = (f(n * out), f(cin * k.iter().product::<usize>()));
                (
                    2.0 * vox * kdim * f(cout),
                    4.0 * (f(n * cin * dhw.iter().product::<usize>()) + vox * f(cout) + kdim * f(cout)),
                )
            }
            Op::Deconv3d { n, cin, cout, dhw, k, .. } => {
                let (vin, taps) = (f(n * dhw.iter().product::<usize>()), f(k.iter().product::<usize>()));
                (2.0 * vin * taps * f(cin * cout), 4.0 * vin * (f(cin) + taps * f(cout)))
            }
            Op::InstanceNorm3d { n, c, dhw } | Op::GroupNorm3d { n, c, dhw, .. } => {
                (0.0, 8.0 * f(n * c * dhw.iter().product::<usize>()))
            }
            Op::MaxPool3d { n, c, dhw, .. } => (0.0, 5.0 * f(n * c * dhw.iter().product::<usize>())),
            Op::Trilinear { n, c, out, .. } => (0.0, 36.0 * f(n * c * out.iter().product::<usize>())),
            Op::Pad3d { n, c, dhw: [d, h, w] } => (0.0, 8.0 * f(n * c * (d + 1) * (h + 1) * (w + 2))),
            Op::Flip3d { n, c, dhw, .. } => (0.0, 8.0 * f(n * c * dhw.iter().product::<usize>())),
            Op::Concat3d { n, ca, cb, dhw } => (0.0, 8.0 * f(n * (ca + cb) * dhw.iter().product::<usize>())),
        }
    }

    /// Plain f64 loops for the calls whose CPU code is fast (GEMM-based or blocked reductions): what the
    /// CPU backend itself is checked against.
    fn naive(&self, t: &[Tensor]) -> Option<Tensor> {
        let d = |x: &Tensor| x.data().iter().map(|&v| v as f64).collect::<Vec<f64>>();
        let out = |shape: &[usize], v: Vec<f64>| Tensor::new(shape, v.into_iter().map(|x| x as f32).collect()).ok();
        match *self {
            Op::Conv { n, cin, extra, cout, hw, k, act } => {
                let (x, w, bias) = (d(&t[0]), d(&t[1]), d(&t[2]));
                let e = t.get(3).map(d).unwrap_or_default();
                let (ct, pad) = (cin + extra, (k / 2) as isize);
                let mut y = vec![0f64; n * cout * hw * hw];
                for i in 0..n {
                    for co in 0..cout {
                        for oy in 0..hw {
                            for ox in 0..hw {
                                let mut s = bias[co];
                                for ci in 0..ct {
                                    for ky in 0..k {
                                        for kx in 0..k {
                                            let (iy, ix) =
                                                (oy as isize + ky as isize - pad, ox as isize + kx as isize - pad);
                                            if iy < 0 || ix < 0 || iy >= hw as isize || ix >= hw as isize {
                                                continue;
                                            }
                                            let p = iy as usize * hw + ix as usize;
                                            let v = if ci < cin {
                                                x[(i * cin + ci) * hw * hw + p]
                                            } else {
                                                e[(i * extra + ci - cin) * hw * hw + p]
                                            };
                                            s += v * w[((co * ct + ci) * k + ky) * k + kx];
                                        }
                                    }
                                }
                                y[((i * cout + co) * hw + oy) * hw + ox] = act.apply(s as f32) as f64;
                            }
                        }
                    }
                }
                out(&[n, cout, hw, hw], y)
            }
            Op::Deconv { n, cin, cout, hw } => {
                let (x, w, bias) = (d(&t[0]), d(&t[1]), d(&t[2]));
                let ho = 2 * hw;
                let y = (0..n * cout * ho * ho)
                    .map(|o| {
                        let (ox, oy, co, i) = (o % ho, (o / ho) % ho, (o / (ho * ho)) % cout, o / (ho * ho * cout));
                        bias[co]
                            + (0..cin)
                                .map(|ci| {
                                    x[((i * cin + ci) * hw + oy / 2) * hw + ox / 2]
                                        * w[((ci * cout + co) * 2 + oy % 2) * 2 + ox % 2]
                                })
                                .sum::<f64>()
                    })
                    .collect();
                out(&[n, cout, ho, ho], y)
            }
            Op::Linear { m, k, n } => {
                let (x, w, bias) = (d(&t[0]), d(&t[1]), d(&t[2]));
                out(
                    &[m, n],
                    (0..m * n)
                        .map(|o| bias[o % n] + (0..k).map(|j| x[(o / n) * k + j] * w[(o % n) * k + j]).sum::<f64>())
                        .collect(),
                )
            }
            Op::InstanceNorm { n, c, .. } | Op::InstanceNorm3d { n, c, .. } | Op::GroupNorm3d { n, c, .. } => {
                let (x, g, bt) = (d(&t[0]), d(&t[1]), d(&t[2]));
                let (groups, act) = match *self {
                    Op::GroupNorm3d { groups, .. } => (groups, Activation::Relu),
                    _ => (c, Activation::LeakyRelu(0.1)),
                };
                let (plane, per) = (x.len() / (n * c), c / groups);
                let mut y = vec![0f64; x.len()];
                for p in 0..n * groups {
                    let span = p * per * plane..(p + 1) * per * plane;
                    let v = &x[span.clone()];
                    let mean = v.iter().sum::<f64>() / v.len() as f64;
                    let var = v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / v.len() as f64;
                    for (j, (o, a)) in y[span].iter_mut().zip(v).enumerate() {
                        let ch = (p % groups) * per + j / plane;
                        *o = act.apply(((a - mean) / (var + 1e-5).sqrt() * g[ch] + bt[ch]) as f32) as f64;
                    }
                }
                out(t[0].shape(), y)
            }
            Op::Conv3d { n, cin, cout, dhw, k, stride } => {
                let (x, w, bias) = (d(&t[0]), d(&t[1]), d(&t[2]));
                let pad = k.map(|v| v / 2);
                let o: [usize; 3] = std::array::from_fn(|a| (dhw[a] + 2 * pad[a] - k[a]) / stride[a] + 1);
                let (ov, iv) = (o.iter().product::<usize>(), dhw.iter().product::<usize>());
                let mut y = vec![0f64; n * cout * ov];
                for (idx, yv) in y.iter_mut().enumerate() {
                    let (i, co, p) = (idx / (cout * ov), (idx / ov) % cout, idx % ov);
                    let oz = [p / (o[1] * o[2]), (p / o[2]) % o[1], p % o[2]];
                    let mut s = bias[co];
                    for ci in 0..cin {
                        for kz in 0..k[0] {
                            for ky in 0..k[1] {
                                for kx in 0..k[2] {
                                    let tap = [kz, ky, kx];
                                    let at: [isize; 3] = std::array::from_fn(|a| {
                                        (oz[a] * stride[a] + tap[a]) as isize - pad[a] as isize
                                    });
                                    if (0..3).any(|a| at[a] < 0 || at[a] >= dhw[a] as isize) {
                                        continue;
                                    }
                                    let q = (at[0] as usize * dhw[1] + at[1] as usize) * dhw[2] + at[2] as usize;
                                    s += x[(i * cin + ci) * iv + q]
                                        * w[(((co * cin + ci) * k[0] + kz) * k[1] + ky) * k[2] + kx];
                                }
                            }
                        }
                    }
                    *yv = s;
                }
                out(&[n, cout, o[0], o[1], o[2]], y)
            }
            Op::Deconv3d { n, cin, cout, dhw, k, at } => {
                // Scattered from each input voxel and tap (the kernels gather or GEMM + col2im).
                let (x, w, bias) = (d(&t[0]), d(&t[1]), d(&t[2]));
                let o: [usize; 3] =
                    std::array::from_fn(|a| (dhw[a] - 1) * at.stride[a] + k[a] + at.output_pad[a] - 2 * at.pad[a]);
                let (ov, iv, taps) =
                    (o.iter().product::<usize>(), dhw.iter().product::<usize>(), k.iter().product::<usize>());
                let mut y: Vec<f64> = (0..n * cout * ov).map(|idx| bias[(idx / ov) % cout]).collect();
                for i in 0..n {
                    for q in 0..iv {
                        let v = [q / (dhw[1] * dhw[2]), (q / dhw[2]) % dhw[1], q % dhw[2]];
                        for tap in 0..taps {
                            let tk = [tap / (k[1] * k[2]), (tap / k[2]) % k[1], tap % k[2]];
                            let p: [isize; 3] =
                                std::array::from_fn(|a| (v[a] * at.stride[a] + tk[a]) as isize - at.pad[a] as isize);
                            if (0..3).any(|a| p[a] < 0 || p[a] >= o[a] as isize) {
                                continue;
                            }
                            let p = (p[0] as usize * o[1] + p[1] as usize) * o[2] + p[2] as usize;
                            for co in 0..cout {
                                y[(i * cout + co) * ov + p] += (0..cin)
                                    .map(|ci| x[(i * cin + ci) * iv + q] * w[(ci * cout + co) * taps + tap])
                                    .sum::<f64>();
                            }
                        }
                    }
                }
                out(&[n, cout, o[0], o[1], o[2]], y)
            }
            Op::LayerNorm { rows, d: dim } => {
                let (x, g, bt) = (d(&t[0]), d(&t[1]), d(&t[2]));
                let mut y = vec![0f64; x.len()];
                for r in 0..rows {
                    let v = &x[r * dim..(r + 1) * dim];
                    let mean = v.iter().sum::<f64>() / dim as f64;
                    let var = v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / dim as f64;
                    for j in 0..dim {
                        y[r * dim + j] = (v[j] - mean) / (var + 1e-5).sqrt() * g[j] + bt[j];
                    }
                }
                out(&[rows, dim], y)
            }
            Op::Attention { b, l, heads, d: hd, causal } => {
                let (q, k, v) = (d(&t[0]), d(&t[1]), d(&t[2]));
                let width = heads * hd;
                let mut y = vec![0f64; q.len()];
                for bi in 0..b {
                    for h in 0..heads {
                        for i in 0..l {
                            let keys = if causal { i + 1 } else { l };
                            let at = |m: &[f64], r: usize, c: usize| m[(bi * l + r) * width + h * hd + c];
                            let s: Vec<f64> = (0..keys)
                                .map(|j| (0..hd).map(|c| at(&q, i, c) * at(&k, j, c)).sum::<f64>() / (hd as f64).sqrt())
                                .collect();
                            let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                            let z: f64 = s.iter().map(|a| (a - mx).exp()).sum();
                            for c in 0..hd {
                                y[(bi * l + i) * width + h * hd + c] =
                                    (0..keys).map(|j| (s[j] - mx).exp() / z * at(&v, j, c)).sum();
                            }
                        }
                    }
                }
                out(&[b, l, width], y)
            }
            _ => None,
        }
    }
}

/// One row of the selftest table.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CheckRow {
    /// Kernel (backend call) checked.
    pub kernel: String,
    /// Shape it ran at.
    pub shape: String,
    /// "cpu twin", "f64 loops", or "none" (timed only).
    pub reference: &'static str,
    /// max |out - ref| / max |ref| (None when only timed).
    pub max_error: Option<f64>,
    /// Largest error that passes.
    pub bound: f64,
    /// Whether it passed (NaN never does).
    pub passed: bool,
    /// Median time.
    pub milliseconds: f64,
    /// Arithmetic rate.
    pub gflops: f64,
    /// Memory rate.
    pub gbytes_per_s: f64,
    /// Achieved over the device's ceiling for what bounds this call (arithmetic or memory).
    pub of_ceiling: f64,
}

/// Measured or stated rates a call is compared with.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Ceilings {
    /// f32 arithmetic (FLOP/s).
    pub flops: f64,
    /// Arithmetic at the convolutions' precision (tensor cores for tf32/bf16).
    pub conv_flops: f64,
    /// Copy bandwidth (bytes read + written per second).
    pub bytes_per_s: f64,
}

/// Median of repeated runs after one warm-up; a zero budget times a single run.
fn median_seconds(mut f: impl FnMut() -> Result<()>, budget_s: f64) -> Result<f64> {
    let mut times = Vec::new();
    if budget_s <= 0.0 {
        let t = Instant::now();
        f()?;
        return Ok(t.elapsed().as_secs_f64());
    }
    f()?;
    let started = Instant::now();
    while times.len() < 3 || (times.len() < 50 && started.elapsed().as_secs_f64() < budget_s) {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Checks and times every op on `device`. With `twin`, outputs are compared with the CPU backend's;
/// without, with the f64 loops where there are some.
#[allow(clippy::too_many_arguments)]
pub fn check_kernels<B: Backend>(
    device: &B,
    compare_with_cpu: bool,
    precision: Precision,
    ceilings: Ceilings,
    seed: u64,
    quick: bool,
    mut progress: impl FnMut(&CheckRow),
) -> Result<Vec<CheckRow>> {
    let mut rows = Vec::new();
    for (i, op) in ops(quick).into_iter().enumerate() {
        let op_seed = seed.wrapping_add(i as u64 * 7919);
        let inputs = op.inputs(op_seed);
        let on_device: Vec<B::Tensor> = inputs.iter().map(|t| device.upload(t)).collect::<Result<_>>()?;
        let out = device.download(&op.apply(device, &on_device, op_seed)?)?;
        let (reference, label) = if compare_with_cpu {
            (Some(op.apply(&CpuBackend, &inputs, op_seed)?), "cpu twin")
        } else {
            (op.naive(&inputs), "f64 loops")
        };
        let bound = if op.uses_precision() { error_bound(precision) } else { error_bound(Precision::F32) };
        let max_error = reference.as_ref().map(|r| normalised_error(&out, r));
        let seconds = median_seconds(
            || {
                op.apply(device, &on_device, op_seed)?;
                device.synchronize()
            },
            if quick { 0.0 } else { 0.3 },
        )?;
        let (flops, bytes) = op.cost();
        let flop_ceiling = if op.uses_precision() { ceilings.conv_flops } else { ceilings.flops };
        let of_ceiling =
            if flops > 0.0 { flops / seconds / flop_ceiling } else { bytes / seconds / ceilings.bytes_per_s };
        let row = CheckRow {
            kernel: op.name().to_string(),
            shape: op.shape(),
            reference: if reference.is_some() { label } else { "none" },
            max_error,
            bound,
            // An output with NaN (poison left behind, or computed) fails even without a reference.
            passed: max_error.map_or(out.data().iter().all(|v| v.is_finite()), |e| e < bound),
            milliseconds: seconds * 1e3,
            gflops: flops / seconds * 1e-9,
            gbytes_per_s: bytes / seconds * 1e-9,
            of_ceiling,
        };
        progress(&row);
        rows.push(row);
    }
    Ok(rows)
}

/// The CPU's ceilings, measured: SGEMM 1024^3 through the backend's GEMM, and a 256 MB copy.
pub fn cpu_ceilings() -> Ceilings {
    let n = 1024;
    let (a, b) = (vec![1.0f32; n * n], vec![0.5f32; n * n]);
    let mut c = vec![0f32; n * n];
    let gemm = median_seconds(
        || {
            crate::backend::cpu::sgemm(n, n, n, &a, &b, &mut c);
            Ok(())
        },
        0.5,
    )
    .unwrap_or(f64::INFINITY);
    let src = vec![1u8; 256 << 20];
    let mut dst = vec![0u8; 256 << 20];
    let copy = median_seconds(
        || {
            dst.copy_from_slice(&src);
            std::hint::black_box(&dst);
            Ok(())
        },
        0.5,
    )
    .unwrap_or(f64::INFINITY);
    let flops = 2.0 * (n * n * n) as f64 / gemm;
    Ceilings { flops, conv_flops: flops, bytes_per_s: 2.0 * src.len() as f64 / copy }
}

/// One method end to end on the bundled phantom's liver slice.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ExplainRow {
    /// Method.
    pub method: String,
    /// Samples asked for.
    pub samples: usize,
    /// Forward passes done.
    pub forward_passes: usize,
    /// Seconds.
    pub seconds: f64,
    /// Throughput.
    pub forward_passes_per_s: f64,
    /// Saliency against the CPU backend's for the same settings (normalised max error).
    pub max_error: Option<f64>,
    /// Largest error that passes.
    pub bound: f64,
    /// Whether it passed.
    pub passed: bool,
}

/// The U-Net being explained: the bundled one, or (quick) a small random one, the same for a seed.
fn explained_unet<B: Backend>(b: &B, quick: bool) -> Result<crate::models::SegModel<B>> {
    use crate::models::{BasicUNet, SegModel, UNetConfig};
    Ok(SegModel::Basic(if quick {
        BasicUNet::random(
            b,
            UNetConfig::from_json(
                r#"{"spatial_dims": 2, "in_channels": 1, "out_channels": 3, "features": [4, 4, 8, 8, 16, 4]}"#,
            )?,
            5,
        )?
    } else {
        BasicUNet::load_dir(b, &crate::models::bundled("unet")?)?
    }))
}

/// Each method on the bundled phantom's liver slice at `samples` (RISE masks; LIME/SHAP samples =
/// samples / 4), timed on `device` and, with `compare_with_cpu`, checked against the CPU backend's
/// saliency. `quick`: a small random U-Net on a 32x32 grid (explaining whichever class it predicts).
pub fn check_explainers<B: Backend>(
    device: &B,
    compare_with_cpu: bool,
    quick: bool,
    samples: usize,
    batch: usize,
    mut progress: impl FnMut(&ExplainRow),
) -> Result<Vec<ExplainRow>> {
    use crate::pipeline::{run_method, Method, Settings, SliceInput};
    use crate::roi::clip::ClipRoi;
    let size = if quick { 32 } else { 256 };
    let model = explained_unet(device, quick)?;
    // The CPU's model: the reference, and (quick) what picks the class; not loaded for nothing.
    let cpu_model = (compare_with_cpu || quick).then(|| explained_unet(&CpuBackend, quick)).transpose()?;
    let p = crate::phantom::generate(7, 256, 32);
    let k = crate::pipeline::organ_center_slice(&p.image, &p.labels, 1, Default::default())?;
    let slice = SliceInput::new(
        &p.image,
        k,
        crate::preprocess::Intensity::ABDOMEN.range(&p.image),
        size,
        Some(&p.labels),
        1,
        Default::default(),
    )?;
    let class = match &cpu_model {
        Some(m) if quick => (0..m.out_channels())
            .find(|&c| {
                crate::explain::UNetScorer::new(&CpuBackend, m, &slice.image, size, c, ScoreKind::MeanProb).is_ok()
            })
            .unwrap_or(0),
        _ => 1,
    };
    let mut settings = Settings::defaults(11);
    settings.rise.masks = samples;
    settings.occlusion =
        crate::explain::occlusion::Occlusion { window: size / 8, stride: if quick { size / 8 } else { size / 16 } };
    settings.lime.samples = (samples / 4).max(16);
    settings.shap.samples = (samples / 4).max(16);
    settings.segmenter =
        crate::explain::superpixels::Segmenter::Slic { segments: if quick { 12 } else { 64 }, compactness: 0.1 };
    settings.faithfulness_steps = 0;
    settings.batch = batch;
    let mut rows = Vec::new();
    for method in Method::ALL {
        let run = |b: &B, m: &crate::models::SegModel<B>| {
            run_method(
                b,
                m,
                &slice,
                &ClipRoi::default(),
                class,
                method,
                crate::roi::RoiMode::Full,
                &settings,
                |_, _| {},
                &Default::default(),
            )
        };
        if !quick {
            run(device, &model)?;
            device.synchronize()?;
        }
        let timed = run(device, &model)?;
        let (max_error, bound) = if let (true, Some(cpu_model)) = (compare_with_cpu, &cpu_model) {
            let reference = run_method(
                &CpuBackend,
                cpu_model,
                &slice,
                &ClipRoi::default(),
                class,
                method,
                crate::roi::RoiMode::Full,
                &settings,
                |_, _| {},
                &Default::default(),
            )?;
            let plane = |v: &[f32]| Tensor::new(&[v.len()], v.to_vec());
            // LIME/SHAP solve a regression whose conditioning amplifies score differences.
            let bound = if matches!(method, Method::Lime | Method::KernelShap) { 1e-3 } else { 1e-4 };
            (Some(normalised_error(&plane(&timed.saliency)?, &plane(&reference.saliency)?)), bound)
        } else {
            (None, 0.0)
        };
        let row = ExplainRow {
            method: method.name().to_string(),
            samples: timed.samples,
            forward_passes: timed.forward_passes,
            seconds: timed.seconds,
            forward_passes_per_s: timed.forward_passes as f64 / timed.seconds,
            max_error,
            bound,
            passed: max_error.is_none_or(|e| e < bound) && timed.saliency.iter().all(|v| v.is_finite()),
        };
        progress(&row);
        rows.push(row);
    }
    Ok(rows)
}

/// Markdown table of the explainer rows.
pub fn explain_table(rows: &[ExplainRow]) -> String {
    let mut s = String::from("| method | samples | forward passes | seconds | passes/s | error vs cpu | ok |\n|---|---:|---:|---:|---:|---:|---|\n");
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {:.3} | {:.0} | {} | {} |\n",
            r.method,
            r.samples,
            r.forward_passes,
            r.seconds,
            r.forward_passes_per_s,
            r.max_error.map_or("-".to_string(), |e| format!("{e:.1e}")),
            if r.passed { "yes" } else { "NO" }
        ));
    }
    s
}

/// Markdown table of the rows.
pub fn table(rows: &[CheckRow]) -> String {
    let mut s = String::from("| kernel | shape | reference | max error | bound | ok | time | rate | of ceiling |\n|---|---|---|---:|---:|---|---:|---:|---:|\n");
    for r in rows {
        let rate = if r.gflops > 0.0 {
            format!("{:.2} TFLOP/s", r.gflops * 1e-3)
        } else {
            format!("{:.0} GB/s", r.gbytes_per_s)
        };
        s.push_str(&format!(
            "| {} | {} | {} | {} | {:.0e} | {} | {:.3} ms | {} | {:.1}% |\n",
            r.kernel,
            r.shape,
            r.reference,
            r.max_error.map_or("-".to_string(), |e| format!("{e:.1e}")),
            r.bound,
            if r.passed { "yes" } else { "NO" },
            r.milliseconds,
            rate,
            100.0 * r.of_ceiling
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_backend_matches_f64_loops_and_nan_fails() {
        let ceilings = Ceilings { flops: 1e11, conv_flops: 1e11, bytes_per_s: 1e10 };
        let rows = check_kernels(&CpuBackend, false, Precision::F32, ceilings, 12345, false, |_| {}).unwrap();
        assert_eq!(rows.len(), ops(false).len());
        assert!(
            rows.iter().filter(|r| r.reference == "f64 loops").count() >= 10,
            "conv, linear, norms and attention have f64 references"
        );
        for r in &rows {
            assert!(r.passed, "{} {}: error {:?}", r.kernel, r.shape, r.max_error);
        }
        let a = Tensor::new(&[2], vec![1.0, f32::NAN]).unwrap();
        let b = Tensor::new(&[2], vec![1.0, 2.0]).unwrap();
        assert!(normalised_error(&a, &b).is_infinite());
        assert!(normalised_error(&b, &b) == 0.0);
    }
}
