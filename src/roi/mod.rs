//! Regions of interest on the model grid: where the explainers may perturb.
//!
//! `seg` and `bbox` come from the U-Net's own prediction of the organ; `clip` from the language-guided
//! localiser (`clip` submodule). Every ROI is dilated by a margin in millimetres so the explainer also
//! sees the organ's border and immediate context.

pub mod clip;
pub mod volume;

use anyhow::Result;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
/// Where the explainers may perturb.
pub enum RoiMode {
    /// No ROI: the conventional full-image method.
    #[value(name = "none")]
    #[serde(rename = "none")]
    Full,
    /// The U-Net's predicted organ mask, dilated by the margin.
    Seg,
    /// The bounding box of the predicted organ mask, grown by the margin.
    Bbox,
    /// CLIP similarity map for the organ prompt (needs CLIP weights).
    Clip,
    /// Union of the CLIP ROI and the predicted mask.
    #[value(name = "clip+seg")]
    #[serde(rename = "clip+seg")]
    ClipSeg,
}

/// The CLIP ROI: the paper's language-guided mode.
impl Default for RoiMode {
    fn default() -> Self {
        RoiMode::Clip
    }
}

impl RoiMode {
    /// The mode's name in the CLI and records.
    pub fn name(&self) -> &'static str {
        match self {
            RoiMode::Full => "none",
            RoiMode::Seg => "seg",
            RoiMode::Bbox => "bbox",
            RoiMode::Clip => "clip",
            RoiMode::ClipSeg => "clip+seg",
        }
    }
}

/// Least share of the model's own prediction of the organ that an ROI must cover by default (slices
/// and volumes): below it the explanation would be of the wrong place.
pub const MIN_COVERAGE: f64 = 0.9;

/// Pixels within `radius` (pixels, Euclidean) of a set pixel.
pub fn dilate(mask: &[bool], size: usize, radius: f64) -> Vec<bool> {
    let r = radius.max(0.0).floor() as isize;
    let r2 = radius * radius;
    let mut out = mask.to_vec();
    for q in (0..mask.len()).filter(|&q| mask[q]) {
        let (y, x) = ((q / size) as isize, (q % size) as isize);
        for dy in -r..=r {
            for dx in -r..=r {
                let (yy, xx) = (y + dy, x + dx);
                if (dy * dy + dx * dx) as f64 <= r2
                    && yy >= 0
                    && xx >= 0
                    && (yy as usize) < size
                    && (xx as usize) < size
                {
                    out[yy as usize * size + xx as usize] = true;
                }
            }
        }
    }
    out
}

/// The bounding box of `mask`, grown by `margin` pixels.
pub fn bounding_box(mask: &[bool], size: usize, margin: f64) -> Vec<bool> {
    let set: Vec<(usize, usize)> = (0..mask.len()).filter(|&q| mask[q]).map(|q| (q / size, q % size)).collect();
    let m = margin.max(0.0).round() as usize;
    let y0 = set.iter().map(|p| p.0).min().unwrap_or(0).saturating_sub(m);
    let y1 = (set.iter().map(|p| p.0).max().unwrap_or(0) + m).min(size - 1);
    let x0 = set.iter().map(|p| p.1).min().unwrap_or(0).saturating_sub(m);
    let x1 = (set.iter().map(|p| p.1).max().unwrap_or(0) + m).min(size - 1);
    (0..mask.len())
        .map(|q| !set.is_empty() && (y0..=y1).contains(&(q / size)) && (x0..=x1).contains(&(q % size)))
        .collect()
}

impl RoiMode {
    /// Whether the mode needs the CLIP localiser.
    pub fn uses_clip(&self) -> bool {
        matches!(self, RoiMode::Clip | RoiMode::ClipSeg)
    }
}

/// The ROI for `mode` from the predicted organ mask `m0` and, for the CLIP modes, the CLIP mask
/// (thresholded, before the margin); all on the model grid, `margin_px` in model pixels.
pub fn region(mode: RoiMode, m0: &[bool], clip: Option<&[bool]>, size: usize, margin_px: f64) -> Result<Vec<bool>> {
    let clip_mask =
        || clip.ok_or_else(|| anyhow::anyhow!("--roi {} needs the CLIP localiser (weights/clip)", mode.name()));
    Ok(match mode {
        RoiMode::Full => vec![true; m0.len()],
        RoiMode::Seg => dilate(m0, size, margin_px),
        RoiMode::Bbox => bounding_box(m0, size, margin_px),
        RoiMode::Clip => dilate(clip_mask()?, size, margin_px),
        RoiMode::ClipSeg => {
            let union: Vec<bool> = clip_mask()?.iter().zip(m0).map(|(a, b)| *a || *b).collect();
            dilate(&union, size, margin_px)
        }
    })
}

/// Share of pixels set.
pub fn area_fraction(roi: &[bool]) -> f64 {
    roi.iter().filter(|&&b| b).count() as f64 / roi.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dilation_and_box_grow_by_the_margin() {
        let size = 21;
        let mut m = vec![false; size * size];
        m[10 * size + 10] = true;
        let d = dilate(&m, size, 3.0);
        assert_eq!(d.iter().filter(|&&b| b).count(), 29); // lattice points within radius 3
        assert!(d[10 * size + 13] && !d[10 * size + 14] && !d[13 * size + 13]);
        let b = bounding_box(&m, size, 2.0);
        assert_eq!(b.iter().filter(|&&b| b).count(), 25);
        assert!((area_fraction(&b) - 25.0 / 441.0).abs() < 1e-12);
    }
}
