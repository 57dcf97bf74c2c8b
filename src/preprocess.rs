//! From a volume to model inputs and back: axial slice extraction in a fixed display orientation,
//! intensity windowing, resampling to the model's input size.
//!
//! Orientation: a slice is laid out as a radiologist reads an axial image (and as DICOM stores it):
//! row 0 is the patient's anterior side, column 0 the patient's right. The slice axis is the voxel axis
//! closest to the patient's superior-inferior direction, and `--slice K` is the voxel index along it as
//! stored in the file (ITK-SNAP's and 3D Slicer's voxel coordinate), so no re-slicing or re-numbering
//! happens whatever the file's orientation.

use crate::fail;
use crate::io::Volume;
use crate::organs::organ_name;
use anyhow::{bail, Context, Result};
use std::str::FromStr;

/// A 2-D single-channel image, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// Row-major values.
    pub data: Vec<f32>,
}

/// How voxel axes map to slice rows, columns and the slice index.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AxialLayout {
    /// Voxel axis along which axial slices are stacked (closest to superior-inferior).
    pub slice_axis: usize,
    /// Voxel axis that becomes the slice's rows (anterior to posterior).
    pub row_axis: usize,
    /// Voxel axis that becomes the slice's columns (patient right to left).
    pub col_axis: usize,
    /// Rows run against that voxel axis.
    pub flip_rows: bool,
    /// Columns run against that voxel axis.
    pub flip_cols: bool,
}

impl AxialLayout {
    /// The layout of `volume` from its affine; refuses an affine without an axial axis.
    pub fn of(volume: &Volume) -> Result<Self> {
        let a = &volume.affine;
        // Dominant world axis (0 = R-L, 1 = A-P, 2 = S-I) of each voxel axis.
        let dominant: Vec<usize> =
            (0..3).map(|c| (0..3).max_by(|&x, &y| a[x][c].abs().total_cmp(&a[y][c].abs())).unwrap_or(c)).collect();
        let axis_for = |world: usize| dominant.iter().position(|&d| d == world);
        let (Some(col_axis), Some(row_axis), Some(slice_axis)) = (axis_for(0), axis_for(1), axis_for(2)) else {
            bail!("{}: voxel axes are too oblique to tell the axial direction (affine {a:?})", volume.source.display());
        };
        // RAS+: column index must run toward the patient's left (-x), row index toward posterior (-y).
        Ok(Self { slice_axis, row_axis, col_axis, flip_cols: a[0][col_axis] > 0.0, flip_rows: a[1][row_axis] > 0.0 })
    }

    /// Number of axial slices.
    pub fn slices(&self, volume: &Volume) -> usize {
        volume.dims[self.slice_axis]
    }

    /// (height, width) of a slice.
    pub fn slice_shape(&self, volume: &Volume) -> (usize, usize) {
        (volume.dims[self.row_axis], volume.dims[self.col_axis])
    }

    /// (row spacing, column spacing) in mm.
    pub fn pixel_spacing(&self, volume: &Volume) -> (f64, f64) {
        let s = volume.spacing();
        (s[self.row_axis], s[self.col_axis])
    }

    /// Flat voxel index of slice `k`, pixel (row, col).
    fn voxel_index(&self, dims: [usize; 3], k: usize, row: usize, col: usize) -> usize {
        let mut ijk = [0usize; 3];
        ijk[self.slice_axis] = k;
        ijk[self.row_axis] = if self.flip_rows { dims[self.row_axis] - 1 - row } else { row };
        ijk[self.col_axis] = if self.flip_cols { dims[self.col_axis] - 1 - col } else { col };
        ijk[0] + dims[0] * (ijk[1] + dims[1] * ijk[2])
    }

    /// Refuses a slice index outside the volume, naming the file and the range.
    pub fn check_slice(&self, volume: &Volume, k: usize) -> Result<()> {
        let n = self.slices(volume);
        if k >= n {
            crate::fail!(
                InvalidInput,
                "{}: slice {k} is out of range (the volume has {n} axial slices, 0 to {})",
                volume.source.display(),
                n - 1
            );
        }
        Ok(())
    }

    /// Axial slice `k` as a radiologist reads it (row 0 anterior, column 0 patient right).
    pub fn extract(&self, volume: &Volume, k: usize) -> Result<Image> {
        self.check_slice(volume, k)?;
        let (height, width) = self.slice_shape(volume);
        Ok(Image { height, width, data: self.plane(volume.dims, k, &volume.data) })
    }

    /// Slice `k` of any volume-shaped buffer (image or labels), row-major: the inverse of `insert`.
    /// `k` must be in range.
    pub fn plane<T: Copy>(&self, dims: [usize; 3], k: usize, volume: &[T]) -> Vec<T> {
        let (height, width) = (dims[self.row_axis], dims[self.col_axis]);
        (0..height)
            .flat_map(|row| (0..width).map(move |col| (row, col)))
            .map(|(row, col)| volume[self.voxel_index(dims, k, row, col)])
            .collect()
    }

    /// Writes a slice-shaped image back into a volume-shaped buffer at slice `k`.
    pub fn insert<T: Copy>(&self, dims: [usize; 3], k: usize, image: &[T], dst: &mut [T]) {
        let (height, width) = (dims[self.row_axis], dims[self.col_axis]);
        assert_eq!(image.len(), height * width, "slice size must match the volume");
        for row in 0..height {
            for col in 0..width {
                dst[self.voxel_index(dims, k, row, col)] = image[row * width + col];
            }
        }
    }
}

/// How a 2-D model's input slices lie on the volume's voxels: a property of the model.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Orientation {
    /// As a radiologist reads an axial slice (row 0 anterior, column 0 the patient's right), whatever
    /// the file's axes ([`AxialLayout::of`]): the bundled models, and BasicUNets unless their config
    /// says `"layout": "voxel"`.
    #[default]
    Radiological,
    /// The file's voxel axes as stored, without flips: [slice axis, row axis, column axis]. nnU-Net reads
    /// NIfTI as arrays (k, j, i) and slices along the first axis after `transpose_forward`; a model
    /// trained on raw voxel arrays sees slices this way too.
    Voxel([usize; 3]),
    /// The volume reoriented to an axis code such as RAS (MONAI's `Orientationd(axcodes=...)`, nibabel's
    /// `as_closest_canonical` for RAS): axis t of the model's view runs along the file axis closest to
    /// letter t, flipped where that axis points the other way. A 2-D model slices along the third axis,
    /// rows along the first, columns along the second; a 3-D model sees (D, H, W) = the three axes.
    Axes(AxisCode),
}

/// Three orientation letters, one of each pair R/L, A/P, S/I (RAS, LPS, PLI, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AxisCode(pub [u8; 3]);

/// Which pair (0 R/L, 1 A/P, 2 S/I) an orientation letter belongs to.
fn pair_of(letter: u8) -> Option<usize> {
    ["RL", "AP", "SI"].iter().position(|p| p.as_bytes().contains(&letter))
}

impl std::str::FromStr for AxisCode {
    type Err = anyhow::Error;
    fn from_str(text: &str) -> Result<Self> {
        let code = text.to_ascii_uppercase();
        let letters: Vec<u8> = code.bytes().collect();
        let mut seen = [false; 3];
        let valid = letters.len() == 3
            && letters.iter().all(|&c| pair_of(c).is_some_and(|p| !std::mem::replace(&mut seen[p], true)));
        if !valid {
            bail!("axis code {text:?}: expected three letters, one of each pair R/L, A/P, S/I (such as RAS or LPS)");
        }
        Ok(AxisCode([letters[0], letters[1], letters[2]]))
    }
}

impl std::fmt::Display for AxisCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", String::from_utf8_lossy(&self.0))
    }
}

impl AxisCode {
    /// Per axis of the code: the file's voxel axis along it, and whether it runs the other way.
    pub fn axes_in(&self, volume: &Volume) -> Result<[(usize, bool); 3]> {
        let file = volume.orientation();
        let file = file.as_bytes();
        let mut out = [(0, false); 3];
        for (t, &letter) in self.0.iter().enumerate() {
            let Some(axis) = file.iter().position(|&c| pair_of(c) == pair_of(letter)) else {
                bail!(
                    "{}: its voxel axes ({}) are too oblique to reorient to {self}",
                    volume.source.display(),
                    String::from_utf8_lossy(file)
                );
            };
            out[t] = (axis, file[axis] != letter);
        }
        if out.iter().map(|a| a.0).collect::<std::collections::BTreeSet<_>>().len() < 3 {
            bail!("{}: two voxel axes point the same way; cannot reorient to {self}", volume.source.display());
        }
        Ok(out)
    }
}

impl Orientation {
    /// The slice layout of `volume` for a model with this orientation.
    pub fn layout(self, volume: &Volume) -> Result<AxialLayout> {
        match self {
            Orientation::Radiological => AxialLayout::of(volume),
            Orientation::Voxel([slice_axis, row_axis, col_axis]) => {
                Ok(AxialLayout { slice_axis, row_axis, col_axis, flip_rows: false, flip_cols: false })
            }
            Orientation::Axes(code) => {
                let [(row_axis, flip_rows), (col_axis, flip_cols), (slice_axis, _)] = code.axes_in(volume)?;
                Ok(AxialLayout { slice_axis, row_axis, col_axis, flip_rows, flip_cols })
            }
        }
    }

    /// How a 3-D model sees a volume, in words: an axis code reorients it, anything else keeps the
    /// file's voxel order (MONAI's LoadImage).
    pub fn describe_volume(self) -> String {
        match self {
            Orientation::Axes(code) => {
                format!("reoriented to {code} (as MONAI's Orientationd): (D, H, W) along {code}")
            }
            _ => "the file's voxel order, no reorientation (as MONAI's LoadImage)".into(),
        }
    }

    /// In words, for `info` and reports.
    pub fn describe(self) -> String {
        match self {
            Orientation::Radiological => {
                "radiological (rows anterior to posterior, columns patient right to left)".into()
            }
            Orientation::Voxel([s, r, c]) => {
                format!(
                    "voxel order (slices along file axis {s}, rows along axis {r}, columns along axis {c}, no flips)"
                )
            }
            Orientation::Axes(code) => format!("reoriented to {code} (as MONAI's Orientationd), then in that order"),
        }
    }
}

/// Image modality: decides how intensities are normalised and which prompts describe the organs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Modality {
    /// CT: fixed HU window (--window).
    Ct,
    /// MR: the volume's 0.5th-99.5th percentiles map to [0, 1].
    Mr,
}

impl Modality {
    /// "ct" or "mr", as in reports and CoOp folders.
    pub fn name(self) -> &'static str {
        match self {
            Modality::Ct => "ct",
            Modality::Mr => "mr",
        }
    }
}

/// The lowest value a CT volume in Hounsfield units is expected to reach: air is about -1000 HU.
const CT_AIR_HU: f32 = -200.0;

/// Why `volume` is not `modality`, if it is not: an error where the file states another modality (a
/// DICOM series' Modality), a warning where its values cannot be that modality's (CT in Hounsfield
/// units reaches air near -1000; MR magnitudes are not negative). Feeding a model an MR image through a
/// CT window, or the reverse, gives a near-flat input and a wrong segmentation without any other sign.
pub fn check_modality(volume: &Volume, modality: Modality) -> Result<Option<String>> {
    let src = volume.source.display();
    if let Some(stated) = volume.modality.as_deref() {
        let stated_as = [Modality::Ct, Modality::Mr].into_iter().find(|m| m.name().eq_ignore_ascii_case(stated));
        return match stated_as {
            Some(m) if m == modality => Ok(None),
            Some(m) => crate::fail!(
                InvalidInput,
                "{src}: the series is {stated} (DICOM Modality) but the model's inputs would be made for {}; pass --modality {}",
                modality.name().to_uppercase(),
                m.name()
            ),
            None => Ok(Some(format!(
                "{src}: the series is {stated} (DICOM Modality); the model's inputs are made for {}",
                modality.name().to_uppercase()
            ))),
        };
    }
    // One pass: the lowest value and how many values are air in HU.
    let (min, air) =
        volume.data.iter().fold((f32::INFINITY, 0usize), |(m, a), &v| (m.min(v), a + usize::from(v <= -500.0)));
    let air = air as f64 / volume.data.len().max(1) as f64;
    Ok(match modality {
        Modality::Ct if min > CT_AIR_HU => Some(format!(
            "{src}: no value below {min}, so not CT in Hounsfield units (air is about -1000): an MR image? The CT window makes it a near-flat input; pass --modality mr"
        )),
        Modality::Mr if air >= 0.01 => Some(format!(
            "{src}: {:.0}% of its values are -500 or below, as air in Hounsfield units: a CT image? MR normalisation would be wrong for it; pass --modality ct",
            air * 100.0
        )),
        _ => None,
    })
}

/// Intensity normalisation to [0, 1] before the model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Intensity {
    /// CT window [low, high] in HU.
    #[allow(missing_docs)] // low and high HU, mapped to 0 and 1
    CtWindow { low: f32, high: f32 },
    /// MR: the volume's 0.5th and 99.5th percentiles become 0 and 1.
    MrPercentile,
    /// nnU-Net's ZScoreNormalization: the model sees (v - mean) / std with the volume's own mean and
    /// standard deviation (likewise a MONAI bundle's NormalizeIntensityd/ScaleIntensityd). Slices are
    /// made in the volume's [min, max], so nothing is clipped, and the model's input map (which depends
    /// on the volume: `SegModel::view`, `SegModel::with_input_map`) turns them into what it takes.
    ZScore,
}

impl Intensity {
    /// The abdomen window used by default: [-160, 240] HU (level 40, width 400).
    pub const ABDOMEN: Intensity = Intensity::CtWindow { low: -160.0, high: 240.0 };

    /// The modality this normalisation is for.
    pub fn modality(&self) -> Modality {
        match self {
            Intensity::CtWindow { .. } => Modality::Ct,
            // nnU-Net z-scores every modality but CT.
            Intensity::MrPercentile | Intensity::ZScore => Modality::Mr,
        }
    }

    /// Resolves to a concrete (low, high) for this volume.
    pub fn range(&self, volume: &Volume) -> (f32, f32) {
        match *self {
            Intensity::CtWindow { low, high } => (low, high),
            Intensity::MrPercentile => {
                let mut sorted = volume.data.clone();
                sorted.sort_unstable_by(f32::total_cmp);
                let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
                let (lo, hi) = (at(0.005), at(0.995));
                (lo, if hi > lo { hi } else { lo + 1.0 })
            }
            Intensity::ZScore => {
                let (lo, hi) =
                    volume.data.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| (l.min(v), h.max(v)));
                (lo, if hi > lo { hi } else { lo + 1.0 })
            }
        }
    }
}

/// Maps [low, high] to [0, 1], clamping outside.
pub fn normalise(image: &Image, range: (f32, f32)) -> Image {
    Image { data: normalise_values(&image.data, range), ..*image }
}

/// `values` with [low, high] mapped to [0, 1], clamped outside (the model input of slices and volumes).
pub fn normalise_values(values: &[f32], (low, high): (f32, f32)) -> Vec<f32> {
    let scale = 1.0 / (high - low);
    values.iter().map(|v| ((v - low) * scale).clamp(0.0, 1.0)).collect()
}

/// Source coordinate and weight pairs for resampling `from` pixels to `to` with pixel-centre alignment
/// (torch's align_corners = false).
fn bilinear_taps(from: usize, to: usize) -> Vec<(usize, usize, f32)> {
    let scale = from as f64 / to as f64;
    (0..to)
        .map(|o| {
            let pos = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (pos.floor() as usize).min(from - 1);
            let i1 = (i0 + 1).min(from - 1);
            (i0, i1, (pos - i0 as f64) as f32)
        })
        .collect()
}

/// Bilinear resampling of `channels` stacked planes (each from_h x from_w) to to_h x to_w.
pub fn resize_bilinear(
    planes: &[f32],
    channels: usize,
    (from_h, from_w): (usize, usize),
    (to_h, to_w): (usize, usize),
) -> Vec<f32> {
    let (ty, tx) = (bilinear_taps(from_h, to_h), bilinear_taps(from_w, to_w));
    let mut out = Vec::with_capacity(channels * to_h * to_w);
    for c in 0..channels {
        let src = &planes[c * from_h * from_w..(c + 1) * from_h * from_w];
        for &(y0, y1, fy) in &ty {
            for &(x0, x1, fx) in &tx {
                let top = src[y0 * from_w + x0] * (1.0 - fx) + src[y0 * from_w + x1] * fx;
                let bottom = src[y1 * from_w + x0] * (1.0 - fx) + src[y1 * from_w + x1] * fx;
                out.push(top * (1.0 - fy) + bottom * fy);
            }
        }
    }
    out
}

/// Nearest-neighbour resampling (labels) with the same pixel-centre alignment.
pub fn resize_nearest<T: Copy>(plane: &[T], (from_h, from_w): (usize, usize), (to_h, to_w): (usize, usize)) -> Vec<T> {
    let pick = |o: usize, from: usize, to: usize| (((o as f64 + 0.5) * from as f64 / to as f64) as usize).min(from - 1);
    let mut out = Vec::with_capacity(to_h * to_w);
    for oy in 0..to_h {
        let y = pick(oy, from_h, to_h);
        for ox in 0..to_w {
            out.push(plane[y * from_w + pick(ox, from_w, to_w)]);
        }
    }
    out
}

/// Per-pixel argmax over channels of class probabilities resampled bilinearly from the model grid to
/// the slice grid: the label map on the slice's own pixels.
pub fn argmax_on_grid(probs: &[f32], channels: usize, model: (usize, usize), slice: (usize, usize)) -> Vec<u8> {
    let resized = resize_bilinear(probs, channels, model, slice);
    let plane = slice.0 * slice.1;
    (0..plane)
        .map(|p| {
            (0..channels).max_by(|&a, &b| resized[a * plane + p].total_cmp(&resized[b * plane + p])).unwrap_or(0) as u8
        })
        .collect()
}

impl std::str::FromStr for Intensity {
    type Err = anyhow::Error;

    /// A CT window "LOW,HIGH" in HU (e.g. "-160,240"), or "mr" for the MR percentile rule.
    fn from_str(s: &str) -> Result<Self> {
        if s.trim() == "mr" {
            return Ok(Intensity::MrPercentile);
        }
        let parts: Vec<f32> = s
            .split(',')
            .map(|p| p.trim().parse::<f32>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| anyhow::anyhow!("--window {s:?}: expected LOW,HIGH in HU, e.g. -160,240"))?;
        match parts[..] {
            [low, high] if low < high && low.is_finite() && high.is_finite() => Ok(Intensity::CtWindow { low, high }),
            _ => bail!("--window {s:?}: expected LOW,HIGH with LOW < HIGH"),
        }
    }
}

/// Which axial slices to work on (`--slice`, `--slices`): one parser and one resolver for every command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Slices {
    /// The slice where the organ's labelled area is largest (needs labels, or a prediction).
    OrganCenter,
    /// Every K-th slice, starting at 0.
    Every(usize),
    /// These slice indices, along the file's slice axis.
    List(Vec<usize>),
    /// Every slice.
    All,
}

impl FromStr for Slices {
    type Err = anyhow::Error;

    /// "organ-center", "every-K", "all", "K" or "K1,K2,...".
    fn from_str(spec: &str) -> Result<Self> {
        let spec = spec.trim();
        if spec == "organ-center" {
            return Ok(Slices::OrganCenter);
        }
        if spec == "all" {
            return Ok(Slices::All);
        }
        if let Some(k) = spec.strip_prefix("every-") {
            return match k.parse::<usize>() {
                Ok(k) if k >= 1 => Ok(Slices::Every(k)),
                _ => bail!("expected every-K with K >= 1 (e.g. every-5)"),
            };
        }
        let list = spec.split(',').map(|p| p.trim().parse::<usize>()).collect::<std::result::Result<Vec<_>, _>>();
        match list {
            Ok(list) => Ok(Slices::List(list)),
            Err(_) => bail!("expected an index, a comma list of indices, all, every-K or organ-center"),
        }
    }
}

/// The spelling `FromStr` reads.
impl std::fmt::Display for Slices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Slices::OrganCenter => write!(f, "organ-center"),
            Slices::Every(k) => write!(f, "every-{k}"),
            Slices::All => write!(f, "all"),
            Slices::List(list) => {
                write!(f, "{}", list.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(","))
            }
        }
    }
}

impl Slices {
    /// The slice indices for `class` in `volume`, slices taken as `orientation` says; `labels` (on the
    /// volume's grid) are needed by organ-center. Indices are checked against the volume.
    pub fn resolve(
        &self,
        volume: &Volume,
        labels: Option<&[u8]>,
        class: usize,
        orientation: Orientation,
    ) -> Result<Vec<usize>> {
        let layout = orientation.layout(volume)?;
        Ok(match self {
            Slices::OrganCenter => {
                let labels = labels.context("--slice organ-center needs --label")?;
                vec![organ_center_slice(volume, labels, class, orientation)?]
            }
            Slices::Every(k) => (0..layout.slices(volume)).step_by(*k).collect(),
            Slices::All => (0..layout.slices(volume)).collect(),
            Slices::List(list) => {
                for &k in list {
                    layout.check_slice(volume, k)?;
                }
                list.clone()
            }
        })
    }
}

/// The slice where the organ's ground-truth area is largest.
pub fn organ_center_slice(volume: &Volume, labels: &[u8], class: usize, orientation: Orientation) -> Result<usize> {
    let layout = orientation.layout(volume)?;
    let area = |k: usize| layout.plane(volume.dims, k, labels).into_iter().filter(|&l| l as usize == class).count();
    let (k, n) = (0..layout.slices(volume))
        .map(|k| (k, area(k)))
        .max_by_key(|&(k, n)| (n, std::cmp::Reverse(k)))
        .unwrap_or((0, 0));
    if n == 0 {
        fail!(OrganAbsent, "{}: no slice contains {} in the labels", volume.source.display(), organ_name(class));
    }
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn volume(affine: [[f64; 4]; 4]) -> Volume {
        let dims = [4, 3, 2];
        Volume {
            dims,
            data: (0..24).map(|v| v as f32).collect(),
            affine,
            source: PathBuf::from("t.nii"),
            nifti_header: None,
            modality: None,
        }
    }

    #[test]
    fn ras_volume_is_flipped_to_radiological_view() {
        let v = volume([[2.0, 0.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0], [0.0, 0.0, 5.0, 0.0], [0.0, 0.0, 0.0, 1.0]]);
        let layout = AxialLayout::of(&v).unwrap();
        assert_eq!((layout.slice_axis, layout.flip_rows, layout.flip_cols), (2, true, true));
        let img = layout.extract(&v, 1).unwrap();
        // RAS+ points +x to the patient's right and +y anterior: row 0 is the highest y voxel, column 0
        // the highest x voxel.
        assert_eq!((img.height, img.width), (3, 4));
        // Voxel (x=3, y=2, z=1).
        assert_eq!(img.data[0], v.data[3 + 4 * 2 + 4 * 3]);
        assert_eq!(layout.pixel_spacing(&v), (3.0, 2.0));
        let mut back = vec![0.0; 24];
        layout.insert(v.dims, 1, &img.data, &mut back);
        assert_eq!(&back[12..], &v.data[12..]);
        assert!(layout.extract(&v, 2).unwrap_err().to_string().contains("slice 2 is out of range"));
    }

    #[test]
    fn lps_volume_keeps_stored_layout() {
        let v = volume([[-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 1.0]]);
        let layout = AxialLayout::of(&v).unwrap();
        assert_eq!((layout.flip_rows, layout.flip_cols), (false, false));
        assert_eq!(layout.extract(&v, 0).unwrap().data, (0..12).map(|v| v as f32).collect::<Vec<_>>());
    }

    #[test]
    fn resampling_preserves_constants_and_identity() {
        let plane: Vec<f32> = (0..12).map(|v| v as f32).collect();
        assert_eq!(resize_bilinear(&plane, 1, (3, 4), (3, 4)), plane);
        assert!(resize_bilinear(&[5.0; 6], 1, (2, 3), (7, 5)).iter().all(|&v| (v - 5.0).abs() < 1e-6));
        assert_eq!(resize_nearest(&[1u8, 2, 3, 4], (2, 2), (4, 4))[..4], [1, 1, 2, 2]);
    }

    #[test]
    fn window_clamps_to_unit_range() {
        let img = Image { height: 1, width: 3, data: vec![-1000.0, 40.0, 1000.0] };
        assert_eq!(normalise(&img, (-160.0, 240.0)).data, vec![0.0, 0.5, 1.0]);
    }
}
