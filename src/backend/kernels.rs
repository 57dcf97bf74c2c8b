//! Every CUDA kernel the backend launches, as a typed table: the kernel's function name and the
//! kernels/*.cu file (module) it lives in. Launch sites name a `Kernel`, the backend loads it from that
//! one module, and tests/kernels_built.rs checks this table against what nvcc built.

/// A kernel of kernels/*.cu; its CPU twin is the `CpuBackend` call named in `twin()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Implicit-GEMM convolution, f32, Cout <= 16 tile.
    Conv2dF32M16,
    /// Implicit-GEMM convolution, f32, Cout <= 32 tile.
    Conv2dF32M32,
    /// Implicit-GEMM convolution, f32, 64-row tile.
    Conv2dF32M64,
    /// Convolution on the tensor cores, tf32 operands.
    Conv2dTf32,
    /// Convolution on the tensor cores, bf16 operands.
    Conv2dBf16,
    /// Transposed convolution with kernel = stride = 2.
    ConvTranspose2x2,
    /// Instance norm + affine + activation.
    GroupNormAct,
    /// Activation in place.
    ActivateInplace,
    /// a += b.
    AddInplace,
    /// k x k max pooling.
    MaxPool2d,
    /// Bilinear 2x upsampling, align_corners.
    UpsampleBilinear2x,
    /// Replicate padding at the end of H and W.
    PadReplicateEnd,
    /// Channel concatenation.
    ConcatChannels,
    /// Softmax over channels.
    SoftmaxChannels,
    /// Softmax over the last axis.
    SoftmaxRows,
    /// LayerNorm over the last axis.
    LayerNormRows,
    /// y = x W^T + b.
    LinearF32,
    /// Fused multi-head attention (online softmax).
    AttentionF32,
    /// RISE masks + perturbed images.
    RiseMasks,
    /// Occlusion windows + perturbed images.
    WindowMasks,
    /// Superpixel coalitions + perturbed images.
    CoalitionMasks,
    /// One score per perturbed image.
    SegmentationScores,
    /// RISE's Kahan saliency sum.
    AccumulateWeighted,
    /// 3-D implicit-GEMM convolution, f32, Cout <= 16 tile.
    Conv3dF32M16,
    /// 3-D implicit-GEMM convolution, f32, 64-row tile.
    Conv3dF32M64,
    /// 3-D transposed convolution with kernel = stride.
    ConvTranspose3d,
    /// 3-D max pooling.
    MaxPool3d,
    /// Trilinear resizing.
    UpsampleTrilinear,
    /// Replicate padding at the end of D, H and W.
    PadReplicateEnd3d,
    /// Reversal along marked D, H, W axes (test-time mirroring).
    Flip3d,
}

impl Kernel {
    /// Every kernel, in the order of the files.
    pub const ALL: [Kernel; 30] = [
        Kernel::AttentionF32,
        Kernel::Conv2dF32M16,
        Kernel::Conv2dF32M32,
        Kernel::Conv2dF32M64,
        Kernel::Conv2dTf32,
        Kernel::Conv2dBf16,
        Kernel::ConvTranspose2x2,
        Kernel::GroupNormAct,
        Kernel::ActivateInplace,
        Kernel::AddInplace,
        Kernel::MaxPool2d,
        Kernel::UpsampleBilinear2x,
        Kernel::PadReplicateEnd,
        Kernel::ConcatChannels,
        Kernel::SoftmaxChannels,
        Kernel::SoftmaxRows,
        Kernel::LayerNormRows,
        Kernel::LinearF32,
        Kernel::RiseMasks,
        Kernel::WindowMasks,
        Kernel::CoalitionMasks,
        Kernel::SegmentationScores,
        Kernel::AccumulateWeighted,
        Kernel::Conv3dF32M16,
        Kernel::Conv3dF32M64,
        Kernel::ConvTranspose3d,
        Kernel::MaxPool3d,
        Kernel::UpsampleTrilinear,
        Kernel::PadReplicateEnd3d,
        Kernel::Flip3d,
    ];

    /// The `extern "C"` function name in the .cu file.
    pub const fn name(self) -> &'static str {
        match self {
            Kernel::Conv2dF32M16 => "conv2d_f32_m16",
            Kernel::Conv2dF32M32 => "conv2d_f32_m32",
            Kernel::Conv2dF32M64 => "conv2d_f32_m64",
            Kernel::Conv2dTf32 => "conv2d_tf32",
            Kernel::Conv2dBf16 => "conv2d_bf16",
            Kernel::ConvTranspose2x2 => "conv_transpose2x2",
            Kernel::GroupNormAct => "group_norm_act",
            Kernel::ActivateInplace => "activate_inplace",
            Kernel::AddInplace => "add_inplace",
            Kernel::MaxPool2d => "max_pool2d",
            Kernel::UpsampleBilinear2x => "upsample_bilinear2x",
            Kernel::PadReplicateEnd => "pad_replicate_end",
            Kernel::ConcatChannels => "concat_channels",
            Kernel::SoftmaxChannels => "softmax_channels",
            Kernel::SoftmaxRows => "softmax_rows",
            Kernel::LayerNormRows => "layer_norm_rows",
            Kernel::LinearF32 => "linear_f32",
            Kernel::AttentionF32 => "attention_f32",
            Kernel::RiseMasks => "rise_masks",
            Kernel::WindowMasks => "window_masks",
            Kernel::CoalitionMasks => "coalition_masks",
            Kernel::SegmentationScores => "segmentation_scores",
            Kernel::AccumulateWeighted => "accumulate_weighted",
            Kernel::Conv3dF32M16 => "conv3d_f32_m16",
            Kernel::Conv3dF32M64 => "conv3d_f32_m64",
            Kernel::ConvTranspose3d => "conv_transpose3d",
            Kernel::MaxPool3d => "max_pool3d",
            Kernel::UpsampleTrilinear => "upsample_trilinear",
            Kernel::PadReplicateEnd3d => "pad_replicate_end3d",
            Kernel::Flip3d => "flip3d",
        }
    }

    /// The `kernels/<module>.cu` file that defines it.
    pub const fn module(self) -> &'static str {
        match self {
            Kernel::Conv2dF32M16
            | Kernel::Conv2dF32M32
            | Kernel::Conv2dF32M64
            | Kernel::Conv2dTf32
            | Kernel::Conv2dBf16
            | Kernel::ConvTranspose2x2 => "conv",
            Kernel::AttentionF32 => "attention",
            Kernel::RiseMasks
            | Kernel::WindowMasks
            | Kernel::CoalitionMasks
            | Kernel::SegmentationScores
            | Kernel::AccumulateWeighted => "perturb",
            Kernel::Conv3dF32M16
            | Kernel::Conv3dF32M64
            | Kernel::ConvTranspose3d
            | Kernel::MaxPool3d
            | Kernel::UpsampleTrilinear
            | Kernel::PadReplicateEnd3d
            | Kernel::Flip3d => "volume",
            _ => "layers",
        }
    }

    /// The CPU twin: the `Backend` call of `CpuBackend` this kernel must match (selftest compares them).
    pub const fn twin(self) -> &'static str {
        match self {
            Kernel::Conv2dF32M16
            | Kernel::Conv2dF32M32
            | Kernel::Conv2dF32M64
            | Kernel::Conv2dTf32
            | Kernel::Conv2dBf16 => "conv2d_fused",
            Kernel::ConvTranspose2x2 => "conv_transpose2d",
            Kernel::GroupNormAct => "group_norm",
            Kernel::ActivateInplace => "activate",
            Kernel::AddInplace => "add",
            Kernel::MaxPool2d => "max_pool2d",
            Kernel::UpsampleBilinear2x => "upsample_bilinear2x",
            Kernel::PadReplicateEnd => "pad_replicate_end",
            Kernel::ConcatChannels => "concat_channels",
            Kernel::SoftmaxChannels => "softmax_channels",
            Kernel::SoftmaxRows => "softmax_last",
            Kernel::LayerNormRows => "layer_norm",
            Kernel::LinearF32 => "linear",
            Kernel::AttentionF32 => "attention",
            Kernel::RiseMasks | Kernel::WindowMasks | Kernel::CoalitionMasks => "perturb",
            Kernel::SegmentationScores => "segmentation_scores",
            Kernel::AccumulateWeighted => "accumulate_weighted",
            Kernel::Conv3dF32M16 | Kernel::Conv3dF32M64 => "conv3d",
            Kernel::ConvTranspose3d => "conv_transpose3d",
            Kernel::MaxPool3d => "max_pool3d",
            Kernel::UpsampleTrilinear => "upsample_trilinear",
            Kernel::PadReplicateEnd3d => "pad_replicate_end3d",
            Kernel::Flip3d => "flip3d",
        }
    }
}
