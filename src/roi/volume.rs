//! Regions of interest over whole volumes: the CLIP ROI from the organ maps of every axial slice
//! stacked into a volume and thresholded once, 3-D components, and growth by a margin in millimetres.
//! Masks are row-major on a (D, H, W) grid whose per-axis spacing the caller gives.

use super::clip::{binarise, keep_large_components, ClipRoiFinder};
use crate::backend::Backend;
use crate::io::Volume;
use crate::preprocess::{normalise, resize_bilinear, Orientation};
use anyhow::Result;
use std::time::Instant;

/// The CLIP ROI of a whole volume, on the volume's grid in file order (x fastest).
#[derive(Clone, Debug)]
pub struct ClipVolume {
    /// The organ probability of every voxel: its axial slice's CLIP map, resampled to the slice.
    pub probability: Vec<f32>,
    /// The stacked map thresholded once over the volume, 3-D components under a fifth of the largest
    /// dropped (before any margin).
    pub mask: Vec<bool>,
    /// Axial slices run through CLIP.
    pub slices: usize,
    /// Seconds of the text features, every slice's map and the threshold.
    pub seconds: f64,
}

/// The CLIP ROI of `class` (a FLARE22 id) over `volume`: every axial slice, as a radiologist reads it
/// (the view CLIP was trained on), windowed by `range` to [0, 1], resampled to CLIP's input, mapped,
/// and the map resampled back onto the slice's voxels. One threshold over the whole stack (not one per
/// slice) keeps slices without the organ empty. `progress(done, total)` counts slices.
pub fn clip_volume<B: Backend>(
    backend: &B,
    finder: &ClipRoiFinder<B>,
    volume: &Volume,
    range: (f32, f32),
    class: usize,
    progress: impl FnMut(usize, usize),
) -> Result<ClipVolume> {
    clip_slices(backend, finder, volume, range, class, None, progress)
}

/// [`clip_volume`] of axial slice `k` alone, thresholded on its own as a slice's CLIP ROI is (for a
/// run that perturbs that slice only); 0 on every other slice.
pub fn clip_slice<B: Backend>(
    backend: &B,
    finder: &ClipRoiFinder<B>,
    volume: &Volume,
    range: (f32, f32),
    class: usize,
    k: usize,
) -> Result<ClipVolume> {
    clip_slices(backend, finder, volume, range, class, Some(k), |_, _| {})
}

fn clip_slices<B: Backend>(
    backend: &B,
    finder: &ClipRoiFinder<B>,
    volume: &Volume,
    range: (f32, f32),
    class: usize,
    only: Option<usize>,
    mut progress: impl FnMut(usize, usize),
) -> Result<ClipVolume> {
    let started = Instant::now();
    let layout = Orientation::Radiological.layout(volume)?;
    let localiser = finder.localiser(backend, class)?;
    let side = localiser.model.config().image_size;
    let (h, w) = layout.slice_shape(volume);
    let ks: Vec<usize> = only.map_or_else(|| (0..layout.slices(volume)).collect(), |k| vec![k]);
    let mut probability = vec![0f32; volume.voxel_count()];
    for (done, &k) in ks.iter().enumerate() {
        let slice = normalise(&layout.extract(volume, k)?, range);
        let image = resize_bilinear(&slice.data, 1, (h, w), (side, side));
        let map = localiser.probability_map(backend, &image, side, class)?;
        layout.insert(volume.dims, k, &resize_bilinear(&map, 1, (side, side), (h, w)), &mut probability);
        progress(done + 1, ks.len());
    }
    let [nx, ny, nz] = volume.dims;
    let mask = match only {
        None => keep_large_components(&binarise(&probability, finder.threshold()), [nz, ny, nx], 0.2),
        Some(k) => {
            let plane = layout.plane(volume.dims, k, &probability);
            let kept = keep_large_components(&binarise(&plane, finder.threshold()), [1, h, w], 0.2);
            let mut mask = vec![false; volume.voxel_count()];
            layout.insert(volume.dims, k, &kept, &mut mask);
            mask
        }
    };
    Ok(ClipVolume { probability, mask, slices: ks.len(), seconds: started.elapsed().as_secs_f64() })
}

/// `mask` (row-major on `dims`) dilated by an ellipsoid of `radius` mm given the spacing per axis.
pub fn dilate(mask: &[bool], dims: [usize; 3], spacing: [f64; 3], radius: f64) -> Vec<bool> {
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
pub fn bounding_box(mask: &[bool], dims: [usize; 3], margin: [usize; 3]) -> Vec<bool> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
