//! Whole volumes through 3-D U-Nets: the intensity window, the model's view of the voxels, sliding-window
//! inference, the ROI in 3-D, occlusion, RISE, LIME and Kernel SHAP with tile reuse (`explain::volume`),
//! and the metrics over voxels.
//!
//! The model sees the volume as MONAI's `LoadImage` + `EnsureChannelFirst` give it: (1, 1, nx, ny, nz),
//! the file's voxel axes in order, z fastest in memory, or reoriented to the axis code it declares
//! (`Orientationd`), then resampled where the model's framework resamples (an nnU-Net model's plans, a
//! bundle's `Spacingd`; [`crate::resample`]); the explainers work on that grid, and logits, maps and
//! masks come back on the input's grid.

use crate::backend::device::Compute;
use crate::backend::{Backend, Device, Precision};
use crate::dataset::LabelIds;
use crate::explain::lime::{KernelShap, Lime};
use crate::explain::rise::Rise;
use crate::explain::superpixels::{Segmenter, Segments};
use crate::explain::volume::{Occlusion3d, VolumeScorer};
use crate::explain::Cancel;
use crate::fail;
use crate::io::Volume;
use crate::metrics::{agreement, volume_faithfulness, Agreement, Faithfulness};
use crate::models::bundle::Stats;
use crate::models::sliding::SlidingWindow;
use crate::models::SegModel;
use crate::preprocess::{normalise_values, Intensity, Orientation, Slices};
use crate::resample::{self, Orders, Resampling};
use crate::roi::clip::{ClipOptions, ClipRoiFinder};
use crate::roi::volume::{bounding_box, clip_slice, clip_volume, dilate, ClipVolume};
use crate::roi::{RoiMode, MIN_COVERAGE};
use crate::tensor::Tensor;
use anyhow::{ensure, Context, Result};

/// The sliding window's tile where neither the model nor the user states one (MONAI's zoo bundles' 96³).
pub const DEFAULT_PATCH: [usize; 3] = [96; 3];

/// The perturbation method of a whole-volume run.
#[derive(Clone, Copy, Debug, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[allow(clippy::large_enum_variant)] // one per run
pub enum VolumeMethod {
    /// Boxes of the ROI set to the baseline, one sample per window position.
    Occlusion(Occlusion3d),
    /// RISE keep-masks over the ROI (a grid of s³ cells per mask; `tol` is not available in 3-D).
    Rise(Rise),
    /// LIME over SLIC supervoxels of the ROI.
    Lime {
        /// Samples, kernel width, ridge penalty, seed.
        #[serde(flatten)]
        settings: Lime,
        /// The supervoxels (SLIC; `segments` over the whole volume, scaled to the ROI).
        segmenter: Segmenter,
    },
    /// Kernel SHAP over SLIC supervoxels of the ROI.
    KernelShap {
        /// Coalitions and seed.
        #[serde(flatten)]
        settings: KernelShap,
        /// The supervoxels (SLIC; `segments` over the whole volume, scaled to the ROI).
        segmenter: Segmenter,
    },
}

impl VolumeMethod {
    /// The method's name in the CLI and reports.
    pub fn name(&self) -> &'static str {
        match self {
            VolumeMethod::Occlusion(_) => "occlusion",
            VolumeMethod::Rise(_) => "rise",
            VolumeMethod::Lime { .. } => "lime",
            VolumeMethod::KernelShap { .. } => "kernelshap",
        }
    }
}

/// The occlusion window's side in voxels where none is given (MONAI OcclusionSensitivity's mask size).
pub const OCCLUSION_WINDOW: usize = 16;

/// What a whole-volume run does.
#[derive(Clone, Debug)]
pub struct VolumeSettings {
    /// Tiles of the sliding-window inference.
    pub window: SlidingWindow,
    /// Occlusion (window and stride in voxels per axis of the model's view) or RISE.
    pub method: VolumeMethod,
    /// In ROI mode, RISE scores the masks in proportion to the share of its grid cells that hold ROI
    /// voxels, and LIME/SHAP keep the supervoxels' size (segments in proportion to the ROI's share of
    /// the volume, samples to the segments), as on slices; false keeps every mask, segment and sample.
    pub scale_roi_budget: bool,
    /// The region perturbations may touch: none (the whole volume), seg, bbox, clip or clip+seg.
    pub roi: RoiMode,
    /// CLIP and CoOp folders, prompts and threshold of the CLIP ROI.
    pub clip: ClipOptions,
    /// Least share of M0 an ROI must cover; below it the run stops, or uses `fallback`.
    pub min_coverage: f64,
    /// The ROI mode used instead of one that covers too little of M0 (None: the run stops).
    pub fallback: Option<RoiMode>,
    /// ROI margin around the predicted organ, in millimetres.
    pub margin_mm: f64,
    /// Intensity normalisation to [0, 1]; None: the model's own window where it fixes one, else the
    /// abdomen CT window. A window other than the model's own is refused.
    pub intensity: Option<Intensity>,
    /// Recompute only the tiles each perturbation touches (false: every tile; same map, for timing).
    pub reuse: bool,
    /// Deletion/insertion steps over the voxels after the explanation (each step a pass over the tiles
    /// the changed voxels touch, usually all); 0 skips the faithfulness metrics.
    pub faithfulness_steps: usize,
    /// Stops the run at its next batch of tiles (`ErrorKind::Cancelled`); clones share the flag.
    pub cancel: Cancel,
    /// nnU-Net's test-time mirroring ([`crate::models::nnunet::NnUNet::enable_mirroring`]); runs that
    /// share a model must agree.
    pub mirror: bool,
    /// One slice of an nnU-Net 2d configuration instead of the whole volume (one index, or organ-center
    /// with labels; counted along its slicing axis): nnUNetPredictor's grid of the whole volume (cropped,
    /// resampled in plane), of which only that slice is tiled, perturbed and scored; CLIP maps that
    /// slice alone where it is axial, thresholded on its own as a slice's CLIP ROI is. None: the volume.
    pub slice: Option<Slices>,
}

impl VolumeSettings {
    /// Tiles of `patch` voxels at MONAI's default overlap (0.25) with Gaussian blending, occlusion
    /// windows of 16 voxels at stride 16 (MONAI OcclusionSensitivity's mask size), the whole volume
    /// (the bundled CLIP with CoOp for CLIP modes, M0 covered as slices require it, no fallback), the
    /// model's window, tile reuse on, deletion/insertion curves of 10 steps.
    pub fn new(patch: [usize; 3]) -> Self {
        Self {
            window: SlidingWindow {
                blend: crate::models::sliding::Blend::Gaussian,
                batch: 4,
                ..SlidingWindow::new(patch)
            },
            method: VolumeMethod::Occlusion(Occlusion3d {
                window: [OCCLUSION_WINDOW; 3],
                stride: [OCCLUSION_WINDOW; 3],
            }),
            scale_roi_budget: true,
            roi: RoiMode::Full,
            clip: ClipOptions::default(),
            min_coverage: MIN_COVERAGE,
            fallback: None,
            margin_mm: 15.0,
            intensity: None,
            reuse: true,
            faithfulness_steps: 10,
            cancel: Cancel::default(),
            mirror: false,
            slice: None,
        }
    }
}

/// One whole-volume explanation; every per-voxel array is on the input's grid (x fastest).
#[derive(Clone, Debug)]
pub struct VolumeRun {
    /// Mean score drop per voxel (0 outside the ROI).
    pub saliency: Vec<f32>,
    /// M0: the model's prediction of the organ.
    pub m0: Vec<bool>,
    /// The voxels perturbations could touch.
    pub roi: Vec<bool>,
    /// The intensity window the model's input was made with.
    pub intensity: Intensity,
    /// What looked wrong about the volume for that window ([`crate::preprocess::check_modality`]).
    pub warnings: Vec<String>,
    /// Mean organ probability over M0 of the unperturbed volume.
    pub base_score: f32,
    /// Occlusion windows scored.
    pub samples: usize,
    /// Tiles of the sliding window per pass.
    pub tiles: usize,
    /// Tiles run through the model, the unperturbed pass included.
    pub tiles_evaluated: usize,
    /// Tiles a run without reuse would need.
    pub tiles_naive: usize,
    /// Model forwards (batches of tiles).
    pub forward_passes: usize,
    /// Wall time of the explanation.
    pub seconds: f64,
    /// Share of M0 inside the ROI asked for (before any fallback).
    pub roi_coverage: f64,
    /// The mode used instead, when the ROI asked for covered too little of M0.
    pub roi_fallback: Option<RoiMode>,
    /// The CLIP ROI over the volume, when a CLIP mode was asked for or fallen back to.
    pub clip: Option<ClipVolume>,
    /// The map against the labels of the organ (when given): Dice/IoU, AUROC, pointing game over voxels.
    pub agreement: Option<Agreement>,
    /// Deletion and insertion curves over the voxels (when `faithfulness_steps` > 0).
    pub faithfulness: Option<Faithfulness>,
    /// M0 against the labels of the organ (when given): Dice over the voxels explained, how good the
    /// segmentation being explained is.
    pub unet_dice: Option<f64>,
    /// The file axis and index of the one slice explained ([`VolumeSettings::slice`]); the maps and
    /// masks are 0 off it, and the agreement is over its voxels.
    pub slice: Option<(usize, usize)>,
    /// The voxels explained: the volume's, or its one slice's.
    pub explained_voxels: usize,
}

impl VolumeRun {
    /// The share of the voxels explained (the volume, or its one slice) that perturbations could touch.
    pub fn roi_fraction(&self) -> f64 {
        self.roi.iter().filter(|&&r| r).count() as f64 / self.explained_voxels as f64
    }
}

/// How the model sees the volume's voxels: axis t of its (D, H, W) view runs along file axis
/// `axes[t].0`, reversed where `axes[t].1`; the file's order unless the model declares an axis code.
/// An nnU-Net model then crops that array to its nonzero box and resamples it to the plans' spacing, as
/// its preprocessing does; a bundle's `Spacingd` resamples it.
#[derive(Clone, Debug)]
struct View {
    axes: [(usize, bool); 3],
    file: [usize; 3],
    /// The file's voxel spacing along the view's axes.
    spacing: [f64; 3],
    /// nnU-Net's crop to the nonzero voxels, along the view's axes (None: the whole volume).
    crop: Option<[std::ops::Range<usize>; 3]>,
    resampled: Option<Resampled>,
    /// The one slice of the model's grid (along its first axis) the model sees, for a 2d
    /// configuration explained slice by slice ([`VolumeSettings::slice`]); None: the whole grid.
    slab: Option<usize>,
}

/// The view resampled to the model's spacing.
#[derive(Clone, Debug)]
struct Resampled {
    dims: [usize; 3],
    spacing: [f64; 3],
    how: How,
}

#[derive(Clone, Copy, Debug)]
enum How {
    /// nnU-Net's preprocessing (after normalising) and its export of logits.
    NnUNet(Resampling),
    /// A MONAI bundle's `Spacingd` and its `Invertd`; `before_window`: raw values are interpolated.
    Monai { before_window: bool },
}

impl View {
    fn of<B: Backend>(model: &SegModel<B>, volume: &Volume) -> Result<Self> {
        let axes = match (model, model.orientation()) {
            (_, Orientation::Axes(code)) => code.axes_in(volume)?,
            // nnU-Net's arrays are the file's (k, j, i) transposed by transpose_forward.
            (SegModel::NnUNet { .. }, Orientation::Voxel(axes)) => axes.map(|a| (a, false)),
            _ => [(0, false), (1, false), (2, false)],
        };
        let s = volume.spacing();
        let mut view =
            Self { axes, file: volume.dims, spacing: axes.map(|(a, _)| s[a]), crop: None, resampled: None, slab: None };
        if let SegModel::NnUNet { model, .. } = model {
            // crop_to_nonzero, then resampling of what is left.
            let nonzero = crate::models::nnunet::nonzero_box(volume);
            if nonzero.iter().zip(volume.dims).any(|(r, n)| r.len() != n) {
                ensure!(axes.iter().all(|&(_, flip)| !flip), "nnU-Net's arrays are not flipped");
                view.crop = Some(axes.map(|(a, _)| nonzero[a].clone()));
            }
            // A 2d configuration keeps the spacing between slices (nnU-Net's preprocessor and export).
            let target: [f64; 3] = match model.spacing[..] {
                [h, w] => [view.spacing[0], h, w],
                _ => model.spacing[..].try_into().context("a 3-D nnU-Net configuration has 3 spacings")?,
            };
            let dims = resample::new_shape(view.cropped_dims(), view.spacing, target);
            if dims != view.cropped_dims() {
                let how = match &model.resampling {
                    Ok(how) => *how,
                    Err(why) => fail!(
                        Unsupported,
                        "{}: nnU-Net would resample this volume from {:.3?} mm to the plans' {target:.3?} mm with {why}",
                        volume.source.display(),
                        view.spacing
                    ),
                };
                ensure!(
                    dims.iter().all(|&n| n > 0),
                    "{}: resampled to the plans' spacing it has no voxels ({dims:?})",
                    volume.source.display()
                );
                view.resampled = Some(Resampled { dims, spacing: target, how: How::NnUNet(how) });
            }
        }
        if let SegModel::Bundle { bundle, .. } = model {
            if let Some(spacing) = bundle.spacing {
                let (dims, target) = resample::monai_shape(view.cropped_dims(), view.spacing, spacing.pixdim);
                if target != view.spacing {
                    let how = How::Monai { before_window: spacing.before_window };
                    view.resampled = Some(Resampled { dims, spacing: target, how });
                }
            }
        }
        Ok(view)
    }

    /// The view of slice `k` (along the view's first axis) of an nnU-Net 2d configuration: nnU-Net
    /// crops, normalises and resamples the whole volume, so the model's input is that grid's slice.
    fn of_slice(mut self, volume: &Volume, k: usize) -> Result<Self> {
        let n = self.permuted_dims()[0];
        if k >= n {
            fail!(InvalidInput, "{}: slice {k} is past the last slice ({})", volume.source.display(), n - 1);
        }
        let kept = self.crop.as_ref().map_or(0..n, |c| c[0].clone());
        if !kept.contains(&k) {
            fail!(
                OrganAbsent,
                "{}: slice {k} holds no nonzero voxel: nnU-Net crops it away (it keeps slices {} to {}) and labels it background; pick another slice",
                volume.source.display(),
                kept.start,
                kept.end - 1
            );
        }
        self.slab = Some(k - kept.start);
        Ok(self)
    }

    /// The slab alone as a view of its own: the crop narrowed to its slice (a 2d configuration keeps the
    /// spacing between slices, so slice k of the model's grid is slice k of the crop).
    fn slab_view(&self) -> Option<Self> {
        let k = self.slab?;
        let [d, h, w] = self.crop.clone().unwrap_or_else(|| self.permuted_dims().map(|n| 0..n));
        let resampled = self.resampled.as_ref().map(|r| Resampled { dims: [1, r.dims[1], r.dims[2]], ..r.clone() });
        Some(Self { crop: Some([d.start + k..d.start + k + 1, h, w]), resampled, slab: None, ..self.clone() })
    }

    /// Slab `k` of values on the whole model grid, or all of them without a slab.
    fn take_slab<T: Copy>(&self, data: Vec<T>) -> Vec<T> {
        let Some(k) = self.slab else { return data };
        let [_, h, w] = self.grid_dims();
        data[k * h * w..(k + 1) * h * w].to_vec()
    }

    /// The file's (D, H, W) along the view's axes.
    fn permuted_dims(&self) -> [usize; 3] {
        self.axes.map(|(a, _)| self.file[a])
    }

    /// The view's (D, H, W) after any crop.
    fn cropped_dims(&self) -> [usize; 3] {
        self.crop.as_ref().map_or(self.permuted_dims(), |c| c.clone().map(|r| r.len()))
    }

    /// The (D, H, W) of the whole volume on the model's grid.
    fn grid_dims(&self) -> [usize; 3] {
        self.resampled.as_ref().map_or(self.cropped_dims(), |r| r.dims)
    }

    /// The model's (D, H, W): the grid, or its one slab.
    fn dims(&self) -> [usize; 3] {
        let [d, h, w] = self.grid_dims();
        [if self.slab.is_some() { 1 } else { d }, h, w]
    }

    /// The file indices of the slab's slice (all of its voxels, cropped or not).
    fn slab_voxels(&self) -> Option<Vec<usize>> {
        let k = self.slab? + self.crop.as_ref().map_or(0, |c| c[0].start);
        let [_, h, w] = self.permuted_dims();
        Some(self.file_indices().skip(k * h * w).take(h * w).collect())
    }

    /// Voxel spacing in mm of the model's grid.
    fn spacing(&self) -> [f64; 3] {
        self.resampled.as_ref().map_or(self.spacing, |r| r.spacing)
    }

    /// File index (x fastest) of each view voxel, in the view's row-major order.
    fn file_indices(&self) -> impl Iterator<Item = usize> + '_ {
        let dims = self.permuted_dims();
        let [nx, ny, _] = self.file;
        (0..dims.iter().product()).map(move |m: usize| {
            let at = [m / (dims[1] * dims[2]), (m / dims[2]) % dims[1], m % dims[2]];
            let mut ijk = [0; 3];
            for (t, &(axis, flip)) in self.axes.iter().enumerate() {
                ijk[axis] = if flip { dims[t] - 1 - at[t] } else { at[t] };
            }
            ijk[0] + nx * (ijk[1] + ny * ijk[2])
        })
    }

    /// File order -> the view's order.
    fn permute<T: Copy>(&self, data: &[T]) -> Vec<T> {
        self.file_indices().map(|f| data[f]).collect()
    }

    /// The view's order back to file order.
    fn unpermute<T: Copy + Default>(&self, data: &[T]) -> Vec<T> {
        let mut out = vec![T::default(); data.len()];
        self.file_indices().zip(data).for_each(|(f, &v)| out[f] = v);
        out
    }

    /// File order -> the view's order, cropped.
    fn file_to_view<T: Copy>(&self, data: &[T]) -> Vec<T> {
        let view = self.permute(data);
        let Some([d, h, w]) = &self.crop else { return view };
        let [_, nh, nw] = self.permuted_dims();
        let rows = d.clone().flat_map(|z| h.clone().map(move |y| (z * nh + y) * nw));
        rows.flat_map(|row| view[row + w.start..row + w.end].iter().copied()).collect()
    }

    /// The cropped view back to file order, `T::default()` outside the crop.
    fn view_to_file<T: Copy + Default>(&self, data: &[T]) -> Vec<T> {
        let Some([d, h, w]) = &self.crop else { return self.unpermute(data) };
        let [nd, nh, nw] = self.permuted_dims();
        let mut view = vec![T::default(); nd * nh * nw];
        let rows = d.clone().flat_map(|z| h.clone().map(move |y| (z * nh + y) * nw));
        rows.zip(data.chunks_exact(w.len())).for_each(|(row, values)| {
            view[row + w.start..row + w.end].copy_from_slice(values);
        });
        self.unpermute(&view)
    }

    /// The model's input from the file's raw values and the intensity window, in the order its framework
    /// applies them.
    fn input(&self, raw: &[f32], window: impl Fn(&[f32]) -> Vec<f32>) -> Vec<f32> {
        match &self.resampled {
            Some(Resampled { how: How::Monai { before_window: true }, .. }) => window(&self.to_model(raw)),
            _ => self.to_model(&window(raw)),
        }
    }

    /// Values on the file's grid -> the model's grid (cropped and resampled as the model's framework
    /// prepares its input).
    fn to_model(&self, data: &[f32]) -> Vec<f32> {
        let view = self.file_to_view(data);
        self.take_slab(match &self.resampled {
            None => view,
            Some(r) => r.resample(&view, self.cropped_dims(), self.spacing, true),
        })
    }

    /// Values on the model's grid (logits, maps) -> the file's grid (as the framework brings its
    /// predictions back; 0 where nnU-Net cropped, which it labels background).
    fn to_file(&self, data: &[f32]) -> Vec<f32> {
        if let Some(slab) = self.slab_view() {
            return slab.to_file(data);
        }
        match &self.resampled {
            None => self.view_to_file(data),
            Some(r) => self.view_to_file(&r.resample(data, self.cropped_dims(), self.spacing, false)),
        }
    }

    /// A mask on the file's grid -> the model's grid (linearly, kept where at least one half).
    fn mask_to_model(&self, mask: &[bool]) -> Vec<bool> {
        let view = self.file_to_view(mask);
        self.take_slab(match &self.resampled {
            None => view,
            Some(r) => r.resample_mask(&view, self.cropped_dims(), self.spacing, true),
        })
    }

    /// A mask on the model's grid -> the file's grid.
    fn mask_to_file(&self, mask: &[bool]) -> Vec<bool> {
        if let Some(slab) = self.slab_view() {
            return slab.mask_to_file(mask);
        }
        match &self.resampled {
            None => self.view_to_file(mask),
            Some(r) => self.view_to_file(&r.resample_mask(mask, self.cropped_dims(), self.spacing, false)),
        }
    }
}

impl Resampled {
    /// `data` from the file's (permuted) grid `file` at `spacing` to the model's (`forward`) or back.
    fn resample(&self, data: &[f32], file: [usize; 3], spacing: [f64; 3], forward: bool) -> Vec<f32> {
        let ((from, to), (current, new)) = if forward {
            ((file, self.dims), (spacing, self.spacing))
        } else {
            ((self.dims, file), (self.spacing, spacing))
        };
        match self.how {
            How::NnUNet(r) => {
                let orders = if forward { r.data } else { r.probabilities };
                resample::resample(data, from, to, current, new, orders)
            }
            How::Monai { .. } => resample::monai_linear(data, from, to, current, new),
        }
    }

    /// A mask resampled linearly, kept where at least one half (as nnU-Net resamples segmentations).
    fn resample_mask(&self, mask: &[bool], file: [usize; 3], spacing: [f64; 3], forward: bool) -> Vec<bool> {
        let values: Vec<f32> = mask.iter().map(|&m| f32::from(u8::from(m))).collect();
        let linear = Self { how: How::NnUNet(Resampling { data: LINEAR, probabilities: LINEAR }), ..self.clone() };
        let how = if matches!(self.how, How::Monai { .. }) { self } else { &linear };
        how.resample(&values, file, spacing, forward).iter().map(|&v| v >= 0.5).collect()
    }
}

/// Linear in plane, nearest across a coarse axis.
const LINEAR: Orders = Orders { order: 1, order_z: 0 };

/// SLIC supervoxels of the model's input inside the ROI, and the samples to score: with `scaled`, the
/// segments wanted shrink with the ROI's share of the volume (at least 4) and the samples with them (at
/// least 16), so supervoxels and samples per supervoxel stay those of the whole-volume run.
fn supervoxels(
    segmenter: Segmenter,
    samples: usize,
    x: &Tensor,
    dims: [usize; 3],
    roi: &[bool],
    scaled: bool,
) -> Result<(Segments, usize)> {
    let (segmenter, samples) = match segmenter {
        Segmenter::Slic { segments, compactness } if scaled => {
            let share = roi.iter().filter(|&&r| r).count() as f64 / roi.len() as f64;
            let kept = ((segments as f64 * share).ceil() as usize).max(4);
            let samples =
                ((samples as f64 * kept as f64 / segments as f64).ceil() as usize).clamp(16.min(samples), samples);
            (Segmenter::Slic { segments: kept, compactness }, samples)
        }
        other => (other, samples),
    };
    Ok((segmenter.segment_volume(x.data(), dims, roi)?, samples))
}

/// The ROI of `mode` in the model's order: M0 or the CLIP mask (model order) grown by `margin_mm`.
fn region(
    mode: RoiMode,
    m0: &[bool],
    clip: Option<&[bool]>,
    dims: [usize; 3],
    spacing: [f64; 3],
    margin_mm: f64,
) -> Result<Vec<bool>> {
    let clip = || clip.ok_or_else(|| anyhow::anyhow!("--roi {} needs the CLIP ROI of the volume", mode.name()));
    Ok(match mode {
        RoiMode::Full => vec![true; m0.len()],
        RoiMode::Seg => dilate(m0, dims, spacing, margin_mm),
        RoiMode::Bbox => bounding_box(m0, dims, std::array::from_fn(|a| (margin_mm / spacing[a]).round() as usize)),
        RoiMode::Clip => dilate(clip()?, dims, spacing, margin_mm),
        RoiMode::ClipSeg => {
            let union: Vec<bool> = clip()?.iter().zip(m0).map(|(c, m)| *c || *m).collect();
            dilate(&union, dims, spacing, margin_mm)
        }
    })
}

/// `data` at `voxels`, or all of it.
fn voxels_of<T: Copy>(data: &[T], voxels: Option<&[usize]>) -> Vec<T> {
    voxels.map_or_else(|| data.to_vec(), |v| v.iter().map(|&i| data[i]).collect())
}

/// Whether `model` takes one slice of a volume's grid: an nnU-Net 2d configuration.
fn explains_slices<B: Backend>(model: &SegModel<B>) -> Result<()> {
    ensure!(
        matches!(model, SegModel::NnUNet { .. }) && model.spatial_dims() == 2,
        "one slice of a volume is for an nnU-Net 2d configuration; this model explains the whole volume (--slice all)"
    );
    Ok(())
}

/// The one slice `slices` names for an nnU-Net 2d configuration, along its slicing axis (organ-center:
/// where `truth`, the `organ`'s labels, covers most voxels).
fn one_slice<B: Backend>(
    slices: &Slices,
    model: &SegModel<B>,
    volume: &Volume,
    truth: Option<&[bool]>,
    organ: &str,
) -> Result<usize> {
    explains_slices(model)?;
    if truth.is_some_and(|t| !t.contains(&true)) {
        fail!(OrganAbsent, "{}: no slice contains {organ} in the labels", volume.source.display());
    }
    let labels: Option<Vec<u8>> = truth.map(|t| t.iter().map(|&b| u8::from(b)).collect());
    match slices.resolve(volume, labels.as_deref(), 1, model.orientation())?[..] {
        [k] => Ok(k),
        ref many => fail!(InvalidInput, "--slice: expected one slice, got {}", many.len()),
    }
}

/// The volume as the model takes it.
struct ModelInput {
    view: View,
    /// (1, 1, D, H, W) in the view's order, windowed to [0, 1].
    x: Tensor,
    /// The sliding window with the model's padding value.
    window: SlidingWindow,
    intensity: Intensity,
    /// [`crate::preprocess::check_modality`]'s warning.
    warning: Option<String>,
    /// The input map this volume gives the model, where it normalises each volume itself
    /// ([`SegModel::with_input_map`]).
    map: Option<[f32; 2]>,
}

fn model_input<B: Backend>(
    model: &SegModel<B>,
    volume: &Volume,
    window: &SlidingWindow,
    intensity: Option<Intensity>,
    slice: Option<usize>,
) -> Result<ModelInput> {
    ensure!(
        model.spatial_dims() == 3 || matches!(model, SegModel::NnUNet { .. }),
        "a 2-D U-Net explains slices; whole volumes need a 3-D one (spatial_dims 3) or an nnU-Net 2d configuration"
    );
    ensure!(model.in_channels() == 1, "the U-Net takes {} input channels; volumes give one", model.in_channels());
    let view = View::of(model, volume)?;
    let view = match slice {
        Some(k) => view.of_slice(volume, k)?,
        None => view,
    };
    let dims = view.dims();
    let intensity = model.input_intensity(intensity)?;
    let warning = crate::preprocess::check_modality(volume, intensity.modality())?;
    // nnU-Net normalises before it resamples, MONAI in the order of its transforms: clipping to the
    // window does not commute with interpolation.
    let range = intensity.range(volume);
    let input = view.input(&volume.data, |values| normalise_values(values, range));
    let map = match model {
        // A bundle's per-volume transforms read the statistics of the grid they run on.
        SegModel::Bundle { bundle, input_map: None, .. } if !bundle.norms.is_empty() => {
            let stats = match bundle.norms_before_spacing {
                true => Stats::of(&normalise_values(&volume.data, range)),
                false => Stats::of(&input),
            };
            bundle.input_map(stats)
        }
        _ => model.input_map_of(volume)?,
    };
    // Padding is 0 in the network's input (nnU-Net and MONAI pad after normalising).
    let cval = map.map_or(model.input_padding(), |[scale, shift]| -shift / scale);
    let x = Tensor::new(&[1, 1, dims[0], dims[1], dims[2]], input)?;
    Ok(ModelInput { view, x, window: SlidingWindow { cval, ..*window }, intensity, warning, map })
}

/// The 3-D `model`'s prediction of the whole `volume` by sliding-window inference: logits (K, voxels),
/// each class on the input's grid (x fastest), as its framework's inferer gives them (nnU-Net's
/// predictor without mirroring, in f32 where it sums in f16). `intensity`: as in [`VolumeSettings`].
pub fn predict_volume<B: Backend>(
    backend: &B,
    model: &SegModel<B>,
    volume: &Volume,
    window: &SlidingWindow,
    intensity: Option<Intensity>,
) -> Result<Vec<f32>> {
    predict(backend, model, volume, window, intensity, None)
}

/// Slice `k` (along its slicing axis) of an nnU-Net 2d configuration's prediction of `volume`, as
/// nnUNetPredictor gives it for the whole volume ([`VolumeSettings::slice`]): logits (K, voxels) on the
/// input's grid, 0 off the slice; only that slice runs through the network.
pub fn predict_slice<B: Backend>(
    backend: &B,
    model: &SegModel<B>,
    volume: &Volume,
    window: &SlidingWindow,
    intensity: Option<Intensity>,
    k: usize,
) -> Result<Vec<f32>> {
    explains_slices(model)?;
    predict(backend, model, volume, window, intensity, Some(k))
}

fn predict<B: Backend>(
    backend: &B,
    model: &SegModel<B>,
    volume: &Volume,
    window: &SlidingWindow,
    intensity: Option<Intensity>,
    slice: Option<usize>,
) -> Result<Vec<f32>> {
    let ModelInput { view, x, window, map, .. } = model_input(model, volume, window, intensity, slice)?;
    let own = model.with_input_map(backend, map)?;
    let model = own.as_ref().unwrap_or(model);
    let y =
        crate::models::sliding::sliding_window_inference(backend, &x, &window, |t| model.forward_logits(backend, t))?;
    Ok(y.data().chunks_exact(view.dims().iter().product()).flat_map(|class| view.to_file(class)).collect())
}

/// Occlusion of `class` over the whole `volume` with the 3-D `model`, in `settings.roi`; `labels` (on
/// the volume's grid, the model's class ids) give the agreement metrics; `clip` (file order) is the CLIP
/// ROI, needed when the mode or its fallback uses CLIP. `progress(done, total)` counts scored samples
/// (occlusion windows or RISE masks).
#[allow(clippy::too_many_arguments)]
pub fn explain_volume<B: Backend>(
    backend: &B,
    model: &SegModel<B>,
    volume: &Volume,
    truth: Option<&[bool]>,
    class: usize,
    settings: &VolumeSettings,
    clip: Option<ClipVolume>,
    progress: impl FnMut(usize, usize),
) -> Result<VolumeRun> {
    let started = std::time::Instant::now();
    let organ = model.class_name(class);
    let slice = settings.slice.as_ref().map(|s| one_slice(s, model, volume, truth, &organ)).transpose()?;
    let ModelInput { view, x, window, intensity, warning, map } =
        model_input(model, volume, &settings.window, settings.intensity, slice)?;
    // Agreement and the organ's presence are over the slice's voxels when one slice is explained.
    let slab = view.slab_voxels();
    let on_slab = |t: &[bool]| voxels_of(t, slab.as_deref());
    if let (Some(k), Some(t)) = (slice, truth) {
        if !on_slab(t).contains(&true) {
            fail!(
                OrganAbsent,
                "{}: slice {k} has no {organ} in the labels; pick another slice (or --slice organ-center)",
                volume.source.display()
            );
        }
    }
    let own = model.with_input_map(backend, map)?;
    let model = own.as_ref().unwrap_or(model);
    let dims = view.dims();
    let place = slice.map_or("volume".to_string(), |k| format!("volume's slice {k}"));
    let mut scorer =
        VolumeScorer::new(backend, model, &x, &window, class, 0.0).map_err(|e| match crate::error::kind_of(&e) {
            crate::error::ErrorKind::OrganAbsent => crate::error::Error::new(
                crate::error::ErrorKind::OrganAbsent,
                format!("the model predicts no {organ} in this {place}: nothing to explain"),
            )
            .into(),
            _ => e,
        })?;
    scorer.reuse = settings.reuse;
    scorer.cancel = settings.cancel.clone();
    let mut m0 = vec![false; dims.iter().product()];
    scorer.m0().iter().for_each(|&v| m0[v] = true);
    let spacing = view.spacing();
    let clip_mask = clip.as_ref().map(|c| view.mask_to_model(&c.mask));
    let roi = region(settings.roi, &m0, clip_mask.as_deref(), dims, spacing, settings.margin_mm)?;
    // An empty ROI covers none of M0: the fallback's case where one is given.
    if !roi.contains(&true) && settings.fallback.is_none() {
        fail!(
            OrganAbsent,
            "the {} ROI is empty in this {} (the CLIP map has no {organ} above its threshold): nothing to perturb; try --roi seg, --roi none, --roi-fallback or another --roi-threshold",
            settings.roi.name(),
            place
        );
    }
    // The ROI must contain the organ the model sees, or the explanation is of the wrong place.
    let covered = |roi: &[bool]| scorer.m0().iter().filter(|&&v| roi[v]).count() as f64 / scorer.m0().len() as f64;
    let roi_coverage = covered(&roi);
    let mut roi_fallback = None;
    let roi = if settings.roi != RoiMode::Full && roi_coverage < settings.min_coverage {
        let Some(fallback) = settings.fallback else {
            fail!(
                RoiMiss,
                "the {} ROI covers {:.1}% of the model's own {organ} prediction in this {place} (at least {:.0}% needed): it would explain the wrong place; use --roi seg or --roi clip+seg, or --roi-fallback seg",
                settings.roi.name(),
                100.0 * roi_coverage,
                100.0 * settings.min_coverage
            );
        };
        roi_fallback = Some(fallback);
        region(fallback, &m0, clip_mask.as_deref(), dims, spacing, settings.margin_mm)?
    } else {
        roi
    };
    scorer.set_roi(roi.clone())?;
    let base_score = scorer.base_score;
    let scaled = roi_fallback.unwrap_or(settings.roi) != RoiMode::Full && settings.scale_roi_budget;
    let result = match settings.method {
        VolumeMethod::Occlusion(occlusion) => occlusion.explain(&mut scorer, progress)?,
        VolumeMethod::Rise(rise) => {
            let masks = if scaled { rise.volume_budget(&roi, dims) } else { rise.masks };
            Rise { masks, ..rise }.explain_volume(&mut scorer, progress)?
        }
        VolumeMethod::Lime { settings: lime, segmenter } => {
            let (segments, samples) = supervoxels(segmenter, lime.samples, &x, dims, &roi, scaled)?;
            Lime { samples, ..lime }.explain_volume(&mut scorer, &segments, progress)?
        }
        VolumeMethod::KernelShap { settings: shap, segmenter } => {
            let (segments, samples) = supervoxels(segmenter, shap.samples, &x, dims, &roi, scaled)?;
            KernelShap { samples, ..shap }.explain_volume(&mut scorer, &segments, progress)?
        }
    };
    let seconds = started.elapsed().as_secs_f64() + clip.as_ref().map_or(0.0, |c| c.seconds);
    let faithfulness = match settings.faithfulness_steps {
        0 => None,
        steps => Some(volume_faithfulness(&mut scorer, &result.saliency, steps)?),
    };
    let saliency = view.to_file(&result.saliency);
    let agreement = truth.map(|t| agreement(&voxels_of(&saliency, slab.as_deref()), &on_slab(t)));
    let m0 = view.mask_to_file(&m0);
    let unet_dice = truth.map(|t| crate::metrics::overlap(&on_slab(&m0), &on_slab(t)).dice);
    Ok(VolumeRun {
        saliency,
        m0,
        unet_dice,
        roi: view.mask_to_file(&roi),
        base_score,
        samples: result.samples,
        tiles: scorer.plan().tiles.len(),
        tiles_evaluated: result.tiles_evaluated,
        tiles_naive: result.tiles_naive,
        forward_passes: result.forward_passes,
        seconds,
        roi_coverage,
        roi_fallback,
        clip,
        agreement,
        faithfulness,
        slice: slice.map(|k| (view.axes[0].0, k)),
        explained_voxels: slab.as_ref().map_or(volume.voxel_count(), Vec::len),
        intensity,
        warnings: warning.into_iter().collect(),
    })
}

/// The sliding window the 3-D model in `dir` runs with in its own framework: nnU-Net's predictor for a
/// result folder (its patch, step 0.5, its Gaussian and tile positions), a bundle's
/// `SlidingWindowInferer` (its overlap, blending and sigma), else MONAI's inferer with the model's patch
/// (or [`DEFAULT_PATCH`]) and Gaussian blending; 4 tiles per forward. None for a 2-D model or one whose
/// description cannot be read (loading it says why).
pub fn model_window(dir: &std::path::Path) -> Option<SlidingWindow> {
    use crate::models::sliding::Blend;
    let (3, patch) = SegModel::<crate::backend::CpuBackend>::describe_dir(dir)? else { return None };
    let patch = patch.unwrap_or(DEFAULT_PATCH);
    let bundle = crate::models::bundle::is_bundle(dir).then(|| crate::models::bundle::read(dir).ok()).flatten();
    let window = match bundle.and_then(|b| b.window) {
        _ if crate::models::nnunet::is_result_folder(dir) => SlidingWindow::nnunet(patch),
        Some(w) => SlidingWindow {
            overlap: w.overlap,
            blend: if w.gaussian { Blend::Gaussian } else { Blend::Constant },
            sigma_scale: w.sigma_scale,
            ..SlidingWindow::new(patch)
        },
        None => SlidingWindow { blend: Blend::Gaussian, ..SlidingWindow::new(patch) },
    };
    Some(SlidingWindow { batch: 4, ..window })
}

/// The sliding window with which the model in `dir` predicts whole volumes: a 3-D model's own
/// ([`model_window`]), or an nnU-Net 2d configuration's, which nnUNetPredictor runs over every slice of
/// the cropped, resampled volume with its 2-D patch as a (1, H, W) tile; None for other 2-D models.
pub fn volume_window(dir: &std::path::Path) -> Option<SlidingWindow> {
    // A result folder's patch has two sides exactly for a 2d configuration.
    if crate::models::nnunet::is_result_folder(dir) {
        if let [h, w] = crate::models::nnunet::patch_of(dir)?[..] {
            return Some(SlidingWindow { batch: 4, ..SlidingWindow::nnunet([1, h, w]) });
        }
    }
    model_window(dir)
}

/// Whether one slice of `volume` explained with the model in `dir` belongs on nnUNetPredictor's grid
/// (`VolumeSettings::slice`, on [`volume_window`]'s window): the model is an nnU-Net 2d configuration at
/// its default grid and the predictor would crop, resample or tile the slice, so a slice resized to the
/// model grid would differ from what it predicts. False for any other model, and for slices that already
/// are one patch at the plans' spacing. Reads plans.json and dataset.json, not the weights.
pub fn slice_needs_predictor_grid(dir: &std::path::Path, volume: &Volume) -> Result<bool> {
    Ok(crate::models::nnunet::is_result_folder(dir)
        && crate::models::nnunet::default_slice_warning(dir, volume)?.is_some())
}

/// The labels at `path` (any grid, matched to `image`) as FLARE22 ids for the model in `dir`:
/// the id schemes of the facade's `read_labels`, and [`LabelIds::Model`] through the class names the model lists.
pub fn model_labels(dir: &std::path::Path, path: &std::path::Path, ids: LabelIds, image: &Volume) -> Result<Vec<u8>> {
    if ids != LabelIds::Model {
        return crate::dataset::load_labels(path, ids, image);
    }
    let Some(classes) = SegModel::<crate::backend::CpuBackend>::classes_in(dir)? else {
        fail!(
            InvalidInput,
            "{}: --label-ids model: the model in {} does not list its classes (its ids are FLARE22's: --label-ids flare22)",
            path.display(),
            dir.display()
        );
    };
    let labels = crate::io::read_image(path)?;
    crate::dataset::model_labels_of(&labels, &classes, image).map_err(|e| crate::error::Error::input(path, e))
}

/// The intensity window the 3-D model in `dir` gets its input with: `asked`, else its own, else the
/// abdomen CT window (a window other than the model's own is refused).
pub fn model_intensity(dir: &std::path::Path, asked: Option<Intensity>) -> Result<Intensity> {
    SegModel::load_dir(&crate::backend::CpuBackend, dir)?.input_intensity(asked)
}

/// The labels (the model's class channels, argmax of the logits; first on ties) of the 3-D model in
/// `dir` over the whole `volume` on `device`, with its own sliding window ([`model_window`]) unless
/// `window` is given; `intensity` and `mirror` as in [`VolumeSettings`].
#[allow(clippy::too_many_arguments)]
pub fn segment_volume_on(
    device: Device,
    precision: Precision,
    dir: &std::path::Path,
    volume: &Volume,
    window: Option<SlidingWindow>,
    intensity: Option<Intensity>,
    mirror: bool,
) -> Result<Vec<u8>> {
    fn on<B: Backend>(
        b: &B,
        dir: &std::path::Path,
        volume: &Volume,
        window: Option<SlidingWindow>,
        intensity: Option<Intensity>,
        mirror: bool,
    ) -> Result<Vec<u8>> {
        let mut model = SegModel::load_dir(b, dir)?;
        model.input_intensity(intensity).with_context(|| dir.display().to_string())?;
        if mirror {
            model.enable_mirroring(b).with_context(|| dir.display().to_string())?;
        }
        let window = window.or_else(|| volume_window(dir)).ok_or_else(|| {
            anyhow::anyhow!(
                "{}: a 2-D model segments slices; whole volumes need a 3-D one or an nnU-Net 2d configuration",
                dir.display()
            )
        })?;
        let logits = predict_volume(b, &model, volume, &window, intensity)?;
        let n = volume.voxel_count();
        ensure!(model.out_channels() <= 256, "{} classes do not fit 8-bit labels", model.out_channels());
        Ok((0..n)
            .map(|v| {
                (0..model.out_channels())
                    .fold(0, |best, k| if logits[k * n + v] > logits[best * n + v] { k } else { best })
                    as u8
            })
            .collect())
    }
    match device.select(precision)? {
        Compute::Cpu(b) => on(&b, dir, volume, window, intensity, mirror),
        Compute::Cuda(b) => on(b.as_ref(), dir, volume, window, intensity, mirror),
    }
}

/// What [`explain_volume_on`] ran and on what.
#[derive(Clone, Debug)]
pub struct VolumeExplained {
    /// The run.
    pub run: VolumeRun,
    /// The backend's name.
    pub backend: String,
    /// The model's output channel explained.
    pub class: usize,
    /// Its name (the model's own where it lists classes).
    pub organ: String,
    /// The organ's ground truth on the input's grid, when labels were given.
    pub truth: Option<Vec<bool>>,
    /// The network in a few words.
    pub network: String,
    /// The files that define the model.
    pub files: Vec<std::path::PathBuf>,
    /// How the model sees the volume's voxels, in words.
    pub orientation: String,
}

/// [`explain_volume`] on `device` with the 3-D model in `dir` (a BasicUNet folder or a MONAI bundle):
/// `organ` is one of the model's classes (its own names where it lists them, else FLARE22's), `labels`
/// are FLARE22 ids on the volume's grid. `progress(stage, done, total)` counts CLIP's slices (stage
/// "clip") and then the method's samples (stage `"<method> 3-D (<roi>)"`).
#[allow(clippy::too_many_arguments)]
pub fn explain_volume_on(
    device: Device,
    precision: Precision,
    dir: &std::path::Path,
    volume: &Volume,
    labels: Option<&[u8]>,
    organ: &str,
    settings: &VolumeSettings,
    progress: impl FnMut(&str, usize, usize),
) -> Result<VolumeExplained> {
    let runs =
        explain_volumes_on(device, precision, dir, volume, labels, organ, std::slice::from_ref(settings), progress)?;
    runs.into_iter().next().ok_or_else(|| anyhow::anyhow!("one run asked for, none made"))
}

/// [`explain_volume_on`] for several runs on the same volume and organ (a bench: each method in full and
/// ROI mode), loading the model once and finding the CLIP ROI once (every run's CLIP options must be the
/// same); each run's seconds include the CLIP ROI where it uses it.
#[allow(clippy::too_many_arguments)]
pub fn explain_volumes_on(
    device: Device,
    precision: Precision,
    dir: &std::path::Path,
    volume: &Volume,
    labels: Option<&[u8]>,
    organ: &str,
    runs: &[VolumeSettings],
    progress: impl FnMut(&str, usize, usize),
) -> Result<Vec<VolumeExplained>> {
    fn on<B: Backend>(
        b: &B,
        dir: &std::path::Path,
        volume: &Volume,
        labels: Option<&[u8]>,
        organ: &str,
        runs: &[VolumeSettings],
        mut progress: impl FnMut(&str, usize, usize),
    ) -> Result<Vec<VolumeExplained>> {
        let mut model = SegModel::load_dir(b, dir)?;
        for run in runs {
            model.input_intensity(run.intensity).with_context(|| dir.display().to_string())?;
        }
        ensure!(runs.windows(2).all(|w| w[0].mirror == w[1].mirror), "runs sharing one model need the same mirroring");
        if runs.first().is_some_and(|r| r.mirror) {
            model.enable_mirroring(b).with_context(|| dir.display().to_string())?;
        }
        let class = model.class_of(organ)?;
        let truth = match labels {
            Some(l) => {
                let id = model.label_id(class)?;
                Some(l.iter().map(|&c| c as usize == id).collect::<Vec<_>>())
            }
            None => None,
        };
        // A fallback applies only to an ROI, so the whole volume never needs CLIP.
        let needs_clip = |s: &VolumeSettings| {
            s.roi.uses_clip() || (s.roi != RoiMode::Full && s.fallback.is_some_and(|f| f.uses_clip()))
        };
        // Each run's one slice, resolved once (organ-center reads the labels).
        let organ_name = model.class_name(class);
        let one =
            |s: &VolumeSettings| s.slice.as_ref().map(|k| one_slice(k, &model, volume, truth.as_deref(), &organ_name));
        let slices: Vec<Option<usize>> = runs.iter().map(|s| one(s).transpose()).collect::<Result<_>>()?;
        let clipped: Vec<(&VolumeSettings, Option<usize>)> =
            runs.iter().zip(slices.iter().copied()).filter(|(s, _)| needs_clip(s)).collect();
        ensure!(
            clipped.windows(2).all(|w| w[0].0.clip == w[1].0.clip && w[0].0.intensity == w[1].0.intensity),
            "runs sharing one CLIP ROI need the same CLIP options and intensity window"
        );
        // Runs of one and the same axial slice need CLIP's map of that slice alone, thresholded on its own
        // as on other 2-D models' slices.
        let axial =
            model.orientation().layout(volume)?.slice_axis == Orientation::Radiological.layout(volume)?.slice_axis;
        let only = match clipped.first() {
            Some(&(_, Some(k))) if axial && clipped.iter().all(|c| c.1 == Some(k)) => Some(k),
            _ => None,
        };
        let clip = match clipped.first() {
            Some((s, _)) => {
                let intensity = model.input_intensity(s.intensity)?;
                let finder = ClipRoiFinder::load(b, &s.clip, intensity.modality())?;
                let (range, label) = (intensity.range(volume), model.label_id(class)?);
                Some(match only {
                    Some(k) => clip_slice(b, &finder, volume, range, label, k)?,
                    None => clip_volume(b, &finder, volume, range, label, |d, t| progress("clip", d, t))?,
                })
            }
            None => None,
        };
        let mut out = Vec::with_capacity(runs.len());
        for (settings, k) in runs.iter().zip(slices) {
            let settings = &VolumeSettings { slice: k.map(|k| Slices::List(vec![k])), ..settings.clone() };
            let what = if settings.slice.is_some() { "slice" } else { "3-D" };
            let stage = format!("{} {what} ({})", settings.method.name(), settings.roi.name());
            let clip = clip.clone().filter(|_| needs_clip(settings));
            let run = explain_volume(b, &model, volume, truth.as_deref(), class, settings, clip, |d, t| {
                progress(&stage, d, t)
            })?;
            out.push(VolumeExplained {
                run,
                backend: b.name(),
                class,
                organ: model.class_name(class),
                truth: truth.clone(),
                network: model.describe(),
                orientation: model.describe_volume(),
                files: model.files(dir),
            });
        }
        Ok(out)
    }
    match device.select(precision)? {
        Compute::Cpu(b) => on(&b, dir, volume, labels, organ, runs, progress),
        Compute::Cuda(b) => on(b.as_ref(), dir, volume, labels, organ, runs, progress),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_orders_round_trip_and_put_z_fastest() {
        let view = View {
            axes: [(0, false), (1, false), (2, false)],
            file: [3, 4, 5],
            spacing: [1.0; 3],
            crop: None,
            resampled: None,
            slab: None,
        };
        let data: Vec<usize> = (0..60).collect();
        let model = view.permute(&data);
        // File voxel (i, j, k) = i + 3 (j + 4 k); in the model's order k runs fastest.
        assert_eq!(&model[..3], &[0, 12, 24]);
        assert_eq!(view.unpermute(&model), data);
        // Reoriented: the view's axes are file axes (2, 0, 1), the first of them reversed.
        let view = View {
            axes: [(2, true), (0, false), (1, false)],
            file: [3, 4, 5],
            spacing: [1.0; 3],
            crop: None,
            resampled: None,
            slab: None,
        };
        assert_eq!(view.dims(), [5, 3, 4]);
        let model = view.permute(&data);
        // View voxel (0, 0, 0) is file (0, 0, 4); (0, 0, 1) moves along file axis 1; (1, 0, 0) to k = 3.
        assert_eq!((model[0], model[1], model[12]), (48, 51, 36));
        assert_eq!(view.unpermute(&model), data);
    }
}
