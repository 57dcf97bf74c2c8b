//! Shapes of the 3-D (NCDHW) layers, checked once for both backends: each backend call validates its
//! arguments here and gets back the output geometry, so the CPU (src/backend/cpu/volume.rs) and CUDA
//! (kernels/volume.cu) paths refuse the same inputs with the same messages.

use anyhow::{bail, ensure, Result};

/// (N, C, D, H, W) of a rank-5 shape.
pub fn ncdhw(shape: &[usize], what: &str) -> Result<(usize, usize, [usize; 3])> {
    match shape[..] {
        [n, c, d, h, w] => Ok((n, c, [d, h, w])),
        _ => bail!("{what}: expected an NCDHW tensor, got shape {shape:?}"),
    }
}

/// (N, C, voxels per channel) of an NCHW or NCDHW shape: the layers that treat each (image, channel)
/// plane or volume alike (instance norm, concatenation, channel softmax).
pub fn batch_channels_plane(shape: &[usize], what: &str) -> Result<(usize, usize, usize)> {
    match shape {
        [n, c, rest @ ..] if rest.len() == 2 || rest.len() == 3 => Ok((*n, *c, rest.iter().product())),
        _ => bail!("{what}: expected an NCHW or NCDHW tensor, got shape {shape:?}"),
    }
}

/// A 3-D convolution's geometry: input (n, cin, d, h, w) * weight (cout, cin, kd, kh, kw) with `stride`
/// and symmetric zero padding `pad` per axis gives (n, cout, out).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv3d {
    /// Images.
    pub n: usize,
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Input D, H, W.
    pub input: [usize; 3],
    /// Kernel extent per axis.
    pub kernel: [usize; 3],
    /// Stride per axis.
    pub stride: [usize; 3],
    /// Zero padding per axis (both sides).
    pub pad: [usize; 3],
    /// Output D, H, W.
    pub output: [usize; 3],
}

impl Conv3d {
    /// Checks the shapes and returns the geometry.
    pub fn new(x: &[usize], weight: &[usize], stride: [usize; 3], pad: [usize; 3]) -> Result<Self> {
        let (n, cin, input) = ncdhw(x, "conv3d input")?;
        let (cout, wcin, kernel) = ncdhw(weight, "conv3d weight")?;
        ensure!(wcin == cin, "conv3d: input has {cin} channels, weight expects {wcin}");
        ensure!(stride.iter().all(|&s| s >= 1), "conv3d: stride must be >= 1 on every axis, got {stride:?}");
        ensure!(kernel.iter().all(|&k| k >= 1), "conv3d: empty kernel {kernel:?}");
        for a in 0..3 {
            ensure!(
                input[a] + 2 * pad[a] >= kernel[a],
                "conv3d: kernel {kernel:?} larger than the padded input {input:?} (padding {pad:?})"
            );
        }
        let output = std::array::from_fn(|a| (input[a] + 2 * pad[a] - kernel[a]) / stride[a] + 1);
        Ok(Self { n, cin, cout, input, kernel, stride, pad, output })
    }

    /// Rows of the implicit GEMM's inner dimension: cin * kd * kh * kw.
    pub fn kdim(&self) -> usize {
        self.cin * self.kernel.iter().product::<usize>()
    }

    /// The output shape.
    pub fn output_shape(&self) -> [usize; 5] {
        [self.n, self.cout, self.output[0], self.output[1], self.output[2]]
    }
}

/// Where a transposed convolution puts its kernel (PyTorch's `ConvTranspose3d` arguments): input voxel i
/// and tap t land on output o = i stride - pad + t; `output_pad` adds voxels at the far end. Kernel =
/// stride with no padding is MONAI's and nnU-Net's upsampling (each output voxel has one tap); kernel 3,
/// stride 2, pad 1, output_pad 1 is MONAI UNet's (overlapping taps).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transposed {
    /// Stride per axis (D, H, W).
    pub stride: [usize; 3],
    /// Zero padding removed from both ends per axis.
    pub pad: [usize; 3],
    /// Extra output voxels at the far end per axis (less than the stride).
    pub output_pad: [usize; 3],
}

impl Transposed {
    /// Kernel = stride, no padding: every output voxel receives exactly one tap.
    pub fn kernel_stride(kernel: [usize; 3]) -> Self {
        Self { stride: kernel, pad: [0; 3], output_pad: [0; 3] }
    }
}

/// A transposed 3-D convolution: input (n, cin, d, h, w), weight (cin, cout, kd, kh, kw), output
/// (n, cout, od, oh, ow) with o = (i - 1) stride - 2 pad + k + output_pad per axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvTranspose3d {
    /// Images.
    pub n: usize,
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Input D, H, W.
    pub input: [usize; 3],
    /// Kernel per axis.
    pub kernel: [usize; 3],
    /// Stride, padding and output padding.
    pub at: Transposed,
    /// Output D, H, W.
    pub output: [usize; 3],
}

impl ConvTranspose3d {
    /// Checks the shapes and arguments and returns the geometry.
    pub fn new(x: &[usize], weight: &[usize], at: Transposed) -> Result<Self> {
        let (n, cin, input) = ncdhw(x, "conv_transpose3d input")?;
        let (wcin, cout, kernel) = ncdhw(weight, "conv_transpose3d weight")?;
        Self::checked(n, (cin, wcin, cout), input, kernel, at)
    }

    /// The geometry of already split shapes (the 2-D call runs as one slice).
    pub fn checked(
        n: usize,
        (cin, wcin, cout): (usize, usize, usize),
        input: [usize; 3],
        kernel: [usize; 3],
        at: Transposed,
    ) -> Result<Self> {
        ensure!(wcin == cin, "conv_transpose3d: input has {cin} channels, weight expects {wcin}");
        ensure!(kernel.iter().all(|&k| k >= 1), "conv_transpose3d: empty kernel {kernel:?}");
        let Transposed { stride, pad, output_pad } = at;
        ensure!(
            (0..3).all(|a| stride[a] >= 1 && output_pad[a] < stride[a]),
            "conv_transpose3d: stride {stride:?} must be at least 1 and above output_pad {output_pad:?}"
        );
        let full = |a: usize| (input[a].max(1) - 1) * stride[a] + kernel[a] + output_pad[a];
        ensure!(
            input.iter().all(|&v| v > 0) && (0..3).all(|a| full(a) > 2 * pad[a]),
            "conv_transpose3d: padding {pad:?} leaves no output of input {input:?} with kernel {kernel:?}"
        );
        let output = std::array::from_fn(|a| full(a) - 2 * pad[a]);
        Ok(Self { n, cin, cout, input, kernel, at, output })
    }

    /// The output shape.
    pub fn output_shape(&self) -> [usize; 5] {
        [self.n, self.cout, self.output[0], self.output[1], self.output[2]]
    }
}

/// Channels per group of a group norm of `channels` into `groups`.
pub fn channels_per_group(channels: usize, groups: usize) -> Result<usize> {
    ensure!(
        groups >= 1 && channels.is_multiple_of(groups),
        "group_norm: {channels} channels do not split into {groups} groups of equal size"
    );
    Ok(channels / groups)
}

/// Max pooling with window = stride `k` per axis, floor mode: output D, H, W.
pub fn max_pool3d(x: &[usize], k: [usize; 3]) -> Result<(usize, usize, [usize; 3], [usize; 3])> {
    let (n, c, input) = ncdhw(x, "max_pool3d")?;
    ensure!((0..3).all(|a| k[a] >= 1 && input[a] >= k[a]), "max_pool3d: window {k:?} larger than the input {input:?}");
    Ok((n, c, input, std::array::from_fn(|a| input[a] / k[a])))
}

/// Trilinear resizing to `size`: (n, c, input).
pub fn resize3d(x: &[usize], size: [usize; 3], what: &str) -> Result<(usize, usize, [usize; 3])> {
    let (n, c, input) = ncdhw(x, what)?;
    ensure!(input.iter().all(|&v| v > 0) && size.iter().all(|&v| v > 0), "{what}: cannot resize {input:?} to {size:?}");
    Ok((n, c, input))
}

/// Source taps of a linear resampling axis from `input` to `output` samples: (i0, i1, weight of i1),
/// as PyTorch's `interpolate(mode="trilinear")` computes them. align_corners = true maps the end samples
/// onto each other (o (in - 1) / (out - 1)); false maps sample centres ((o + 0.5) in / out - 0.5, clamped
/// at 0), PyTorch's rule when the size (or an integer scale factor) is given.
pub fn linear_taps(input: usize, output: usize, align_corners: bool) -> Vec<(usize, usize, f32)> {
    (0..output)
        .map(|o| {
            let pos = if align_corners {
                if output > 1 {
                    o as f64 * (input - 1) as f64 / (output - 1) as f64
                } else {
                    0.0
                }
            } else {
                ((o as f64 + 0.5) * input as f64 / output as f64 - 0.5).max(0.0)
            };
            let i0 = (pos.floor() as usize).min(input - 1);
            let i1 = (i0 + 1).min(input - 1);
            (i0, i1, (pos - i0 as f64) as f32)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv_geometry_follows_pytorch() {
        // nnU-Net's first 3d_fullres stage on an anisotropic patch: kernel (1, 3, 3), stride (1, 2, 2).
        let g = Conv3d::new(&[2, 4, 7, 33, 32], &[8, 4, 1, 3, 3], [1, 2, 2], [0, 1, 1]).unwrap();
        assert_eq!(g.output_shape(), [2, 8, 7, 17, 16]);
        assert_eq!(g.kdim(), 36);
        assert!(Conv3d::new(&[1, 4, 2, 8, 8], &[8, 3, 3, 3, 3], [1; 3], [1; 3]).is_err());
        assert!(Conv3d::new(&[1, 4, 2, 8, 8], &[8, 4, 5, 3, 3], [1; 3], [1; 3]).is_err());
        assert!(Conv3d::new(&[1, 4, 8, 8], &[8, 4, 3, 3], [1; 3], [1; 3]).is_err());
    }

    #[test]
    fn taps_match_pytorch_rules() {
        // align_corners = false, 2 -> 4: source positions -0.25 (clamped to 0), 0.25, 0.75, 1.25.
        let t = linear_taps(2, 4, false);
        assert_eq!(t, vec![(0, 1, 0.0), (0, 1, 0.25), (0, 1, 0.75), (1, 1, 0.25)]);
        // align_corners = true, 2 -> 3: 0, 0.5, 1.
        assert_eq!(linear_taps(2, 3, true), vec![(0, 1, 0.0), (0, 1, 0.5), (1, 1, 0.0)]);
    }
}
