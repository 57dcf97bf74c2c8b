//! Whole volumes through 3-D U-Nets: the intensity window, the model's view of the voxels, sliding-window
//! inference, the ROI in 3-D, occlusion with tile reuse (`explain::volume`), and the metrics over voxels.
//!
//! The model sees the volume as MONAI's `LoadImage` + `EnsureChannelFirst` give it: (1, 1, nx, ny, nz),
//! the file's voxel axes in order, z fastest in memory, no reorientation and no resampling (the volume
//! should already be at the spacing the model was trained on). Maps come back on the input's grid.

use crate::backend::device::Compute;
use crate::backend::{Backend, Device, Precision};
use crate::explain::volume::{Occlusion3d, VolumeScorer};
use crate::fail;
use crate::io::Volume;
use crate::metrics::{agreement, Agreement};
use crate::models::sliding::SlidingWindow;
use crate::models::SegModel;
use crate::preprocess::{normalise_values, Intensity};
use crate::roi::RoiMode;
use crate::tensor::Tensor;
use anyhow::{ensure, Result};

/// The sliding window's tile where neither the model nor the user states one (MONAI's zoo bundles' 96³).
pub const DEFAULT_PATCH: [usize; 3] = [96; 3];

/// What a whole-volume occlusion run does.
#[derive(Clone, Debug)]
pub struct VolumeSettings {
    /// Tiles of the sliding-window inference.
    pub window: SlidingWindow,
    /// The occlusion window and stride (voxels per axis of the model's view).
    pub occlusion: Occlusion3d,
    /// The region perturbations may touch: none (the whole volume), seg or bbox.
    pub roi: RoiMode,
    /// ROI margin around the predicted organ, in millimetres.
    pub margin_mm: f64,
    /// Intensity normalisation to [0, 1]; None: the model's own window where it fixes one, else the
    /// abdomen CT window. A window other than the model's own is refused.
    pub intensity: Option<Intensity>,
    /// Recompute only the tiles each perturbation touches (false: every tile; same map, for timing).
    pub reuse: bool,
}

impl VolumeSettings {
    /// Tiles of `patch` voxels at MONAI's default overlap (0.25) with Gaussian blending, occlusion
    /// windows of 16 voxels at stride 16 (MONAI OcclusionSensitivity's mask size), the whole volume,
    /// the abdomen CT window, tile reuse on.
    pub fn new(patch: [usize; 3]) -> Self {
        Self {
            window: SlidingWindow {
                blend: crate::models::sliding::Blend::Gaussian,
                batch: 4,
                ..SlidingWindow::new(patch)
            },
            occlusion: Occlusion3d { window: [16; 3], stride: [16; 3] },
            roi: RoiMode::Full,
            margin_mm: 15.0,
            intensity: None,
            reuse: true,
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
    /// Share of M0 inside the ROI.
    pub roi_coverage: f64,
    /// The map against the labels of the organ (when given): Dice/IoU, AUROC, pointing game over voxels.
    pub agreement: Option<Agreement>,
}

/// File order (x fastest) -> the model's order (z fastest): index (i ny + j) nz + k.
fn to_model<T: Copy>(data: &[T], [nx, ny, nz]: [usize; 3]) -> Vec<T> {
    let mut out = Vec::with_capacity(data.len());
    for i in 0..nx {
        for j in 0..ny {
            out.extend((0..nz).map(|k| data[i + nx * (j + ny * k)]));
        }
    }
    out
}

/// The model's order back to file order.
fn to_file<T: Copy + Default>(data: &[T], [nx, ny, nz]: [usize; 3]) -> Vec<T> {
    let mut out = vec![T::default(); data.len()];
    for (m, &v) in data.iter().enumerate() {
        let (i, j, k) = (m / (ny * nz), (m / nz) % ny, m % nz);
        out[i + nx * (j + ny * k)] = v;
    }
    out
}

/// `mask` (model order, dims) dilated by an ellipsoid of `radius` mm given the spacing per axis.
fn dilate(mask: &[bool], dims: [usize; 3], spacing: [f64; 3], radius: f64) -> Vec<bool> {
    let reach: [isize; 3] = std::array::from_fn(|a| (radius / spacing[a]).floor() as isize);
    let offsets: Vec<[isize; 3]> = (-reach[0]..=reach[0])
        .flat_map(|a| (-reach[1]..=reach[1]).flat_map(move |b| (-reach[2]..=reach[2]).map(move |c| [a, b, c])))
        .filter(|o| (0..3).map(|a| (o[a] as f64 * spacing[a]).powi(2)).sum::<f64>() <= radius * radius)
        .collect();
    let index = |p: [isize; 3]| ((p[0] as usize * dims[1]) + p[1] as usize) * dims[2] + p[2] as usize;
    let inside = |p: [isize; 3]| (0..3).all(|a| p[a] >= 0 && p[a] < dims[a] as isize);
    let mut out = mask.to_vec();
    for (v, _) in mask.iter().enumerate().filter(|(_, &m)| m) {
        let p = [(v / (dims[1] * dims[2])) as isize, ((v / dims[2]) % dims[1]) as isize, (v % dims[2]) as isize];
        // Only the surface grows the mask: an interior voxel's ball lies inside its neighbours' balls.
        let interior =
            [[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]].iter().all(|d: &[isize; 3]| {
                let q = [p[0] + d[0], p[1] + d[1], p[2] + d[2]];
                inside(q) && mask[index(q)]
            });
        if interior {
            continue;
        }
        for o in &offsets {
            let q = [p[0] + o[0], p[1] + o[1], p[2] + o[2]];
            if inside(q) {
                out[index(q)] = true;
            }
        }
    }
    out
}

/// The bounding box of `mask` grown by `margin` voxels per axis, as a mask.
fn bounding_box(mask: &[bool], dims: [usize; 3], margin: [usize; 3]) -> Vec<bool> {
    let (mut lo, mut hi) = (dims, [0usize; 3]);
    for (v, _) in mask.iter().enumerate().filter(|(_, &m)| m) {
        let p = [v / (dims[1] * dims[2]), (v / dims[2]) % dims[1], v % dims[2]];
        for a in 0..3 {
            lo[a] = lo[a].min(p[a]);
            hi[a] = hi[a].max(p[a] + 1);
        }
    }
    let lo: [usize; 3] = std::array::from_fn(|a| lo[a].saturating_sub(margin[a]));
    let hi: [usize; 3] = std::array::from_fn(|a| (hi[a] + margin[a]).min(dims[a]));
    (0..mask.len())
        .map(|v| {
            let p = [v / (dims[1] * dims[2]), (v / dims[2]) % dims[1], v % dims[2]];
            (0..3).all(|a| lo[a] <= p[a] && p[a] < hi[a])
        })
        .collect()
}

/// Occlusion of `class` over the whole `volume` with the 3-D `model`, in `settings.roi`; `labels` (on
/// the volume's grid, the model's class ids) give the agreement metrics. `progress(done, total)` counts
/// occlusion windows.
pub fn explain_volume<B: Backend>(
    backend: &B,
    model: &SegModel<B>,
    volume: &Volume,
    truth: Option<&[bool]>,
    class: usize,
    settings: &VolumeSettings,
    progress: impl FnMut(usize, usize),
) -> Result<VolumeRun> {
    ensure!(model.spatial_dims() == 3, "a 2-D U-Net explains slices; whole volumes need a 3-D one (spatial_dims 3)");
    ensure!(model.in_channels() == 1, "the U-Net takes {} input channels; volumes give one", model.in_channels());
    if matches!(settings.roi, RoiMode::Clip | RoiMode::ClipSeg) {
        fail!(
            InvalidInput,
            "--roi {}: the CLIP ROI of whole volumes is not available yet; use --roi seg, bbox or none",
            settings.roi.name()
        );
    }
    let started = std::time::Instant::now();
    let dims = volume.dims;
    let intensity = model.input_intensity(settings.intensity)?;
    let input = normalise_values(&to_model(&volume.data, dims), intensity.range(volume));
    let x = Tensor::new(&[1, 1, dims[0], dims[1], dims[2]], input)?;
    let mut scorer = VolumeScorer::new(backend, model, &x, &settings.window, class, 0.0)?;
    scorer.reuse = settings.reuse;
    let voxels = volume.voxel_count();
    let mut m0 = vec![false; voxels];
    scorer.m0().iter().for_each(|&v| m0[v] = true);
    let spacing = volume.spacing();
    let roi = match settings.roi {
        RoiMode::Seg => dilate(&m0, dims, spacing, settings.margin_mm),
        RoiMode::Bbox => {
            bounding_box(&m0, dims, std::array::from_fn(|a| (settings.margin_mm / spacing[a]).round() as usize))
        }
        _ => vec![true; voxels],
    };
    let roi_coverage = m0.iter().zip(&roi).filter(|(m, r)| **m && **r).count() as f64 / scorer.m0().len() as f64;
    scorer.set_roi(roi.clone())?;
    let base_score = scorer.base_score;
    let result = settings.occlusion.explain(&mut scorer, progress)?;
    let seconds = started.elapsed().as_secs_f64();
    let saliency = to_file(&result.saliency, dims);
    let agreement = truth.map(|t| agreement(&saliency, t));
    Ok(VolumeRun {
        saliency,
        m0: to_file(&m0, dims),
        roi: to_file(&roi, dims),
        base_score,
        samples: result.samples,
        tiles: scorer.plan().tiles.len(),
        tiles_evaluated: result.tiles_evaluated,
        tiles_naive: result.tiles_naive,
        forward_passes: result.forward_passes,
        seconds,
        roi_coverage,
        agreement,
        intensity,
    })
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
}

/// [`explain_volume`] on `device` with the 3-D model in `dir` (a BasicUNet folder or a MONAI bundle):
/// `organ` is one of the model's classes (its own names where it lists them, else FLARE22's), `labels`
/// are FLARE22 ids on the volume's grid.
#[allow(clippy::too_many_arguments)]
pub fn explain_volume_on(
    device: Device,
    precision: Precision,
    dir: &std::path::Path,
    volume: &Volume,
    labels: Option<&[u8]>,
    organ: &str,
    settings: &VolumeSettings,
    progress: impl FnMut(usize, usize),
) -> Result<VolumeExplained> {
    fn on<B: Backend>(
        b: &B,
        dir: &std::path::Path,
        volume: &Volume,
        labels: Option<&[u8]>,
        organ: &str,
        settings: &VolumeSettings,
        progress: impl FnMut(usize, usize),
    ) -> Result<VolumeExplained> {
        let model = SegModel::load_dir(b, dir)?;
        if matches!(model, SegModel::NnUNet { .. }) {
            fail!(
                InvalidInput,
                "{}: whole-volume explanations of 3-D nnU-Net models are not available yet (their (k, j, i) axis order and tile plan are not wired into the volume path); explain slices with a 2d configuration",
                dir.display()
            );
        }
        let class = model.class_of(organ)?;
        let truth = match labels {
            Some(l) => {
                let id = model.label_id(class)?;
                Some(l.iter().map(|&c| c as usize == id).collect::<Vec<_>>())
            }
            None => None,
        };
        let run = explain_volume(b, &model, volume, truth.as_deref(), class, settings, progress)?;
        Ok(VolumeExplained {
            run,
            backend: b.name(),
            class,
            organ: model.class_name(class),
            truth,
            network: model.describe(),
            files: model.files(dir),
        })
    }
    match device.select(precision)? {
        Compute::Cpu(b) => on(&b, dir, volume, labels, organ, settings, progress),
        Compute::Cuda(b) => on(b.as_ref(), dir, volume, labels, organ, settings, progress),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_orders_round_trip_and_put_z_fastest() {
        let dims = [3, 4, 5];
        let data: Vec<usize> = (0..60).collect();
        let model = to_model(&data, dims);
        // File voxel (i, j, k) = i + 3 (j + 4 k); in the model's order k runs fastest.
        assert_eq!(&model[..3], &[0, 12, 24]);
        assert_eq!(to_file(&model, dims), data);
    }

    #[test]
    fn dilation_is_an_ellipsoid_in_millimetres() {
        let dims = [9, 9, 9];
        let mut mask = vec![false; 729];
        mask[(4 * 9 + 4) * 9 + 4] = true;
        // 2 mm voxels along the first axis, 1 mm along the others: a 2 mm ball reaches 1 voxel / 2 voxels.
        let grown = dilate(&mask, dims, [2.0, 1.0, 1.0], 2.0);
        let at = |a: usize, b: usize, c: usize| grown[(a * 9 + b) * 9 + c];
        assert!(at(5, 4, 4) && !at(6, 4, 4) && at(4, 6, 4) && !at(4, 7, 4) && at(4, 4, 2));
        // 13 offsets in the middle plane (b² + c² <= 4), one on each side along the coarse axis.
        assert_eq!(grown.iter().filter(|&&b| b).count(), 13 + 2);
        let boxed = bounding_box(&mask, dims, [1, 0, 2]);
        assert_eq!(boxed.iter().filter(|&&b| b).count(), 3 * 5);
    }
}
