//! Data set layouts: FLARE22 (NIfTI), CHAOS CT and MR (DICOM + PNG masks), and generic image/label pairs.
//! Each becomes a naturally sorted list of cases; a case loads as a `Volume` plus FLARE22 labels on its
//! grid, whatever the layout stored.

use crate::error::Error;
use crate::io::{self, dicom, Volume};
use crate::phantom::Sequence;
use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
/// The folder layouts `xaiclip eval` reads.
pub enum DatasetKind {
    /// `imagesTr/<case>_0000.nii.gz` with `labelsTr/<case>.nii.gz` (FLARE22 ids 1-13); imagesTs unlabeled.
    Flare22,
    /// `CT/<case>/DICOM_anon/*.dcm` with `CT/<case>/Ground/*.png` (liver = 255).
    #[value(name = "chaos-ct")]
    ChaosCt,
    /// `MR/<case>/T1DUAL/DICOM_anon/{InPhase,OutPhase}` and `MR/<case>/T2SPIR/DICOM_anon`, each with the
    /// Ground/*.png beside DICOM_anon (liver 63, right kidney 126, left kidney 189, spleen 252).
    #[value(name = "chaos-mr")]
    ChaosMr,
    /// --images DIR (NIfTI files or DICOM folders) paired with --labels DIR by file stem (a trailing
    /// "_0000" on image names is ignored).
    Pairs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
/// Which id scheme a label volume uses.
pub enum LabelIds {
    /// FLARE22 ids (1 liver, 2 right kidney, 3 spleen, ..., 13 left kidney).
    Flare22,
    /// TotalSegmentator's CT task ("total", ids 1-117), mapped to FLARE22.
    Totalseg,
    /// TotalSegmentator's MR task ("total_mr", ids 1-50: other numbers than the CT task's), mapped to
    /// FLARE22.
    TotalsegMr,
    /// The model's own class ids (an nnU-Net model's dataset.json labels), mapped to FLARE22 by name
    /// (`Explainer::read_labels`; the model must list its classes).
    Model,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
/// How a PNG mask encodes organs.
pub enum PngEncoding {
    /// 0 background, 255 liver.
    ChaosCt,
    /// CHAOS MR grey levels, each with its documented tolerance.
    ChaosMr,
}

#[derive(Clone, Debug, PartialEq)]
/// Where a case's labels come from.
pub enum LabelSource {
    /// Unlabeled (e.g. a test split).
    None,
    /// A label volume and its id scheme.
    Volume(PathBuf, LabelIds),
    /// One PNG per DICOM file, matched by their order.
    Png(PathBuf, PngEncoding),
}

#[derive(Clone, Debug, PartialEq)]
/// One case of a data set: its image, labels and modality.
pub struct CaseEntry {
    /// Stable name: the shard split and the results' "case" field.
    pub id: String,
    /// NIfTI file or DICOM series folder.
    pub image: PathBuf,
    /// Its labels.
    pub labels: LabelSource,
    /// MR (percentile normalisation) rather than CT.
    pub mr: bool,
}

/// Larger PNG masks are refused before decoding (CT/MR slices are at most a few thousand pixels wide).
pub const MAX_MASK_SIDE: u32 = 8192;

/// Ordering with digit runs compared as numbers: "case2" before "case10", "IMG-9" before "IMG-10".
pub fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let key = |(digit, c): (bool, &str)| {
        if digit {
            (c.trim_start_matches('0').len(), c.trim_start_matches('0').to_string())
        } else {
            (0, c.to_string())
        }
    };
    for (x, y) in chunks(a).into_iter().zip(chunks(b)) {
        let o = if x.0 && y.0 { key(x).cmp(&key(y)) } else { x.1.cmp(y.1) };
        if o.is_ne() {
            return o;
        }
    }
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

fn list(dir: &Path, keep: impl Fn(&Path) -> bool) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list folder", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) && keep(p))
        .collect();
    out.sort_by(|a, b| natural_cmp(&a.to_string_lossy(), &b.to_string_lossy()));
    Ok(out)
}

fn name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// "case_0001_0000.nii.gz" -> "case_0001"; "liver_7" (a DICOM folder) -> "liver_7".
fn stem(p: &Path) -> String {
    let n = name(p);
    let n = n.strip_suffix(".nii.gz").or_else(|| n.strip_suffix(".nii")).unwrap_or(&n);
    n.strip_suffix("_0000").unwrap_or(n).to_string()
}

/// Named like a NIfTI file and not a folder. A dangling symlink or an unreadable file still counts, so
/// it fails as a case (errors.jsonl) instead of vanishing from the data set.
fn is_nifti(p: &Path) -> bool {
    let n = name(p);
    !p.is_dir() && (n.ends_with(".nii.gz") || n.ends_with(".nii"))
}

/// The label map `dir/<stem>.nii.gz` (or .nii) of `image`, which must exist.
fn label_file(dir: &Path, stem: &str, image: &Path) -> Result<PathBuf> {
    [".nii.gz", ".nii"]
        .iter()
        .map(|e| dir.join(format!("{stem}{e}")))
        .find(|p| p.is_file())
        .with_context(|| format!("{}: no label {}/{stem}.nii.gz for this image", image.display(), dir.display()))
}

fn flare22(root: &Path, unlabeled: bool) -> Result<Vec<CaseEntry>> {
    let (tr, ts) = (root.join("imagesTr"), root.join("imagesTs"));
    if !(tr.is_dir() || unlabeled && ts.is_dir()) {
        bail!(
            "{}: not a FLARE22 folder (no imagesTr/{})",
            root.display(),
            if unlabeled { " or imagesTs/" } else { "" }
        );
    }
    let mut cases = Vec::new();
    if tr.is_dir() {
        let labels = root.join("labelsTr");
        for image in list(&tr, is_nifti)? {
            let id = stem(&image);
            let label = label_file(&labels, &id, &image)?;
            cases.push(CaseEntry { id, image, labels: LabelSource::Volume(label, LabelIds::Flare22), mr: false });
        }
    }
    if unlabeled && ts.is_dir() {
        for image in list(&ts, is_nifti)? {
            cases.push(CaseEntry { id: format!("Ts/{}", stem(&image)), image, labels: LabelSource::None, mr: false });
        }
    }
    Ok(cases)
}

/// CHAOS series folder `dicom` and its Ground folder (labels only when that folder exists: the test
/// split has none).
fn chaos_case(id: String, dicom: PathBuf, ground: PathBuf, encoding: PngEncoding) -> CaseEntry {
    let labels = if ground.is_dir() { LabelSource::Png(ground, encoding) } else { LabelSource::None };
    CaseEntry { id, image: dicom, labels, mr: encoding == PngEncoding::ChaosMr }
}

fn chaos(root: &Path, modality: &str) -> Result<Vec<CaseEntry>> {
    // Accept the data set root (holding CT/ and MR/) or the modality folder itself.
    let base = if root.join(modality).is_dir() { root.join(modality) } else { root.to_path_buf() };
    let mut cases = Vec::new();
    for case in list(&base, |p| p.is_dir())? {
        let id = format!("{modality}/{}", name(&case));
        if modality == "CT" {
            if case.join("DICOM_anon").is_dir() {
                cases.push(chaos_case(id, case.join("DICOM_anon"), case.join("Ground"), PngEncoding::ChaosCt));
            }
            continue;
        }
        let t1 = case.join("T1DUAL");
        for phase in ["InPhase", "OutPhase"] {
            let dicom = t1.join("DICOM_anon").join(phase);
            if dicom.is_dir() {
                cases.push(chaos_case(format!("{id}/T1DUAL-{phase}"), dicom, t1.join("Ground"), PngEncoding::ChaosMr));
            }
        }
        let t2 = case.join("T2SPIR");
        if t2.join("DICOM_anon").is_dir() {
            cases.push(chaos_case(
                format!("{id}/T2SPIR"),
                t2.join("DICOM_anon"),
                t2.join("Ground"),
                PngEncoding::ChaosMr,
            ));
        }
    }
    if cases.is_empty() {
        bail!(
            "{}: not a CHAOS {modality} folder (no {modality}/<case>/{}DICOM_anon found)",
            root.display(),
            if modality == "MR" { "T1DUAL|T2SPIR/" } else { "" }
        );
    }
    Ok(cases)
}

fn pairs(images: &Path, labels: Option<&Path>, ids: LabelIds, mr: bool) -> Result<Vec<CaseEntry>> {
    let mut cases = Vec::new();
    for image in list(images, |p| is_nifti(p) || p.is_dir())? {
        let id = stem(&image);
        let labels = match labels {
            Some(dir) => LabelSource::Volume(label_file(dir, &id, &image)?, ids),
            None => LabelSource::None,
        };
        cases.push(CaseEntry { id, image, labels, mr });
    }
    if cases.is_empty() {
        bail!("{}: holds no NIfTI images or DICOM folders", images.display());
    }
    Ok(cases)
}

/// The cases of a data set, sorted by id (natural order), ids unique. `ids` is the label scheme of the
/// pairs layout (the other layouts have their own).
pub fn discover(
    kind: DatasetKind,
    root: Option<&Path>,
    images: Option<&Path>,
    labels: Option<&Path>,
    ids: LabelIds,
    unlabeled: bool,
    mr: bool,
) -> Result<Vec<CaseEntry>> {
    let need_root =
        || root.with_context(|| "this data set layout needs its folder (xaiclip eval --dataset KIND DIR)".to_string());
    let mut cases = match kind {
        DatasetKind::Flare22 => flare22(need_root()?, unlabeled)?,
        DatasetKind::ChaosCt => chaos(need_root()?, "CT")?,
        DatasetKind::ChaosMr => chaos(need_root()?, "MR")?,
        DatasetKind::Pairs => {
            pairs(images.context("--dataset pairs needs --images DIR (and --labels DIR for scores)")?, labels, ids, mr)?
        }
    };
    cases.sort_by(|a, b| natural_cmp(&a.id, &b.id));
    if let Some(w) = cases.windows(2).find(|w| w[0].id == w[1].id) {
        bail!("{} and {}: two images with the case name {:?}", w[0].image.display(), w[1].image.display(), w[0].id);
    }
    Ok(cases)
}

/// Shard `index` of `count` (1-based, "i/n"): every n-th case, so n jobs cover the set exactly once.
pub fn parse_shard(spec: &str) -> Result<(usize, usize)> {
    let parsed = spec
        .split_once('/')
        .and_then(|(i, n)| Some((i.trim().parse::<usize>().ok()?, n.trim().parse::<usize>().ok()?)));
    match parsed {
        Some((i, n)) if n >= 1 && (1..=n).contains(&i) => Ok((i, n)),
        _ => bail!("--shard {spec:?}: expected i/n with 1 <= i <= n, e.g. 2/8 (Slurm: $((SLURM_ARRAY_TASK_ID+1))/$SLURM_ARRAY_TASK_COUNT)"),
    }
}

/// Shard `index` of `count` (1-based): every count-th case starting at index - 1.
pub fn shard(cases: Vec<CaseEntry>, (index, count): (usize, usize)) -> Vec<CaseEntry> {
    cases.into_iter().enumerate().filter(|(j, _)| j % count == index - 1).map(|(_, c)| c).collect()
}

/// A CHAOS PNG mask as FLARE22 ids, (height, width) row-major.
pub fn read_png_mask(path: &Path, encoding: PngEncoding) -> Result<(usize, usize, Vec<u8>)> {
    let mut reader = image::ImageReader::open(path)
        .with_context(|| format!("{}: cannot open", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_MASK_SIDE);
    limits.max_image_height = Some(MAX_MASK_SIDE);
    reader.limits(limits);
    let img =
        reader.decode().map_err(|e| anyhow::anyhow!("{}: not a readable PNG mask ({e})", path.display()))?.into_luma8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut labels = Vec::with_capacity(w * h);
    for &g in img.as_raw() {
        let id = match (encoding, g) {
            (_, 0) => 0,
            (PngEncoding::ChaosCt, 255) => 1,
            (PngEncoding::ChaosMr, 55..=70) => 1,
            (PngEncoding::ChaosMr, 110..=135) => 2,
            (PngEncoding::ChaosMr, 175..=200) => 13,
            (PngEncoding::ChaosMr, 240..=255) => 3,
            (PngEncoding::ChaosCt, g) => bail!("{}: grey level {g} is not a CHAOS CT label (0 background, 255 liver)", path.display()),
            (PngEncoding::ChaosMr, g) => bail!("{}: grey level {g} is not a CHAOS MR label (0, liver 55-70, right kidney 110-135, left kidney 175-200, spleen 240-255)", path.display()),
        };
        labels.push(id);
    }
    Ok((h, w, labels))
}

/// PNG masks of `ground`, one per DICOM file of the series in natural file-name order, placed on the
/// series' slices (which `read_series` sorts along the slice normal, possibly in another order).
fn png_labels(ground: &Path, encoding: PngEncoding, volume: &Volume, files: &[PathBuf]) -> Result<Vec<u8>> {
    let masks = list(ground, |p| p.is_file() && name(p).to_lowercase().ends_with(".png"))?;
    let mut by_name: Vec<&PathBuf> = files.iter().collect();
    by_name.sort_by(|a, b| natural_cmp(&name(a), &name(b)));
    if masks.len() != files.len() {
        bail!(
            "{}: {} PNG masks for {} DICOM slices in {} (masks are matched to slices by order)",
            ground.display(),
            masks.len(),
            files.len(),
            volume.source.display()
        );
    }
    let [nx, ny, _] = volume.dims;
    let mut labels = vec![0u8; volume.voxel_count()];
    for (k, file) in files.iter().enumerate() {
        let order = by_name.iter().position(|f| *f == file).expect("file of this series");
        let (h, w, mask) = read_png_mask(&masks[order], encoding)?;
        if (h, w) != (ny, nx) {
            bail!("{}: mask is {w}x{h} pixels but its slice {} is {nx}x{ny}", masks[order].display(), file.display());
        }
        labels[k * nx * ny..(k + 1) * nx * ny].copy_from_slice(&mask);
    }
    Ok(labels)
}

/// Label volume `path` as FLARE22 ids on `image`'s grid. Labels that do not cover the image's grid
/// (another patient, another field of view) are refused rather than silently padded with background.
pub fn load_labels(path: &Path, ids: LabelIds, image: &Volume) -> Result<Vec<u8>> {
    labels_on_grid(path, ids, image).map_err(|e| Error::input(path, e))
}

fn labels_on_grid(path: &Path, ids: LabelIds, image: &Volume) -> Result<Vec<u8>> {
    labels_of(&io::read_image(path)?, ids, image)
}

/// A label volume already read (`labels.source` names it in errors) as FLARE22 ids on `image`'s grid,
/// with the checks of [`load_labels`].
pub fn labels_of(labels: &Volume, ids: LabelIds, image: &Volume) -> Result<Vec<u8>> {
    let path = &labels.source;
    let mut on_grid = ids_on_grid_of(labels, image)?;
    match ids {
        LabelIds::Totalseg | LabelIds::TotalsegMr => {
            let (table, last, map): (_, u8, fn(u8) -> u8) = match ids {
                LabelIds::Totalseg => ("CT task's (total", 117, crate::organs::totalseg_to_flare22),
                _ => ("MR task's (total_mr", 50, crate::organs::totalseg_mr_to_flare22),
            };
            if let Some(bad) = on_grid.iter().find(|&&l| l > last) {
                bail!(
                    "{}: label {bad} is not in TotalSegmentator's {table}, 1-{last}); --label-ids totalseg is the CT task, totalseg-mr the MR task",
                    path.display()
                );
            }
            on_grid.iter_mut().for_each(|l| *l = map(*l));
        }
        LabelIds::Model => {
            bail!(
                "{}: --label-ids model needs the model's class list (explain and bench read it from the model)",
                path.display()
            )
        }
        LabelIds::Flare22 => {
            if let Some(bad) = on_grid.iter().find(|&&l| l > 13) {
                bail!(
                    "{}: label {bad} is not a FLARE22 id (1-13); for TotalSegmentator labels pass --label-ids totalseg",
                    path.display()
                );
            }
        }
    }
    Ok(on_grid)
}

/// Labels in a model's own ids (`classes` by id) as FLARE22 ids on `image`'s grid; classes without a
/// FLARE22 name become 0. Ids beyond the model's classes are refused.
pub fn model_labels_of(labels: &Volume, classes: &[String], image: &Volume) -> Result<Vec<u8>> {
    let on_grid = ids_on_grid_of(labels, image)?;
    if let Some(bad) = on_grid.iter().find(|&&l| l as usize >= classes.len()) {
        bail!(
            "{}: label {bad} is not one of the model's classes (0 to {})",
            labels.source.display(),
            classes.len() - 1
        );
    }
    let to_flare: Vec<u8> =
        classes.iter().map(|c| crate::organs::organ_class(c).ok().filter(|&id| id <= 13).unwrap_or(0) as u8).collect();
    Ok(on_grid.into_iter().map(|l| if l == 0 { 0 } else { to_flare[l as usize] }).collect())
}

/// Integer label ids resampled (nearest) onto `image`'s grid, refusing volumes that do not share it.
fn ids_on_grid_of(labels: &Volume, image: &Volume) -> Result<Vec<u8>> {
    let path = &labels.source;
    labels.check_labels()?;
    let (on_grid, outside) = labels.labels_on_grid_of(image);
    let covered = 1.0 - outside as f64 / image.voxel_count().max(1) as f64;
    if covered < 0.99 {
        let d = |v: &Volume| {
            format!(
                "{}x{}x{} voxels of {:.2}x{:.2}x{:.2} mm",
                v.dims[0],
                v.dims[1],
                v.dims[2],
                v.spacing()[0],
                v.spacing()[1],
                v.spacing()[2]
            )
        };
        bail!(
            "{}: labels cover {:.1}% of the image {} (labels {}, image {}): image and labels do not share a grid",
            path.display(),
            100.0 * covered,
            image.source.display(),
            d(labels),
            d(image)
        );
    }
    Ok(on_grid)
}

/// The case's image and, when it has labels, FLARE22 ids on the image's grid.
pub fn load(case: &CaseEntry) -> Result<(Volume, Option<Vec<u8>>)> {
    match &case.labels {
        LabelSource::Png(ground, encoding) => {
            let read = || {
                let (volume, files) = dicom::read_series_with_files(&case.image)?;
                volume.check_finite()?;
                let labels = png_labels(ground, *encoding, &volume, &files)?;
                Ok((volume, Some(labels)))
            };
            read().map_err(|e| Error::input(&case.image, e))
        }
        LabelSource::Volume(path, ids) => {
            let volume = io::read_image(&case.image)?;
            let labels = load_labels(path, *ids, &volume)?;
            Ok((volume, Some(labels)))
        }
        LabelSource::None => Ok((io::read_image(&case.image)?, None)),
    }
}

/// CHAOS grey level of a FLARE22 id (0 for organs CHAOS does not label).
fn chaos_grey(id: u8, encoding: PngEncoding) -> u8 {
    match (encoding, id) {
        (PngEncoding::ChaosCt, 1) => 255,
        (PngEncoding::ChaosMr, 1) => 63,
        (PngEncoding::ChaosMr, 2) => 126,
        (PngEncoding::ChaosMr, 13) => 189,
        (PngEncoding::ChaosMr, 3) => 252,
        _ => 0,
    }
}

fn write_series_with_masks(
    volume: &Volume,
    labels: &[u8],
    case_dir: &Path,
    dicom: &Path,
    prefix: &str,
    encoding: PngEncoding,
    seed: u64,
) -> Result<()> {
    let modality = if encoding == PngEncoding::ChaosMr { "MR" } else { "CT" };
    dicom::write_series(volume, dicom, prefix, modality, seed)?;
    let ground = case_dir.join("Ground");
    std::fs::create_dir_all(&ground).with_context(|| format!("{}: cannot create folder", ground.display()))?;
    let [nx, ny, nz] = volume.dims;
    for k in 0..nz {
        let grey: Vec<u8> = labels[k * nx * ny..(k + 1) * nx * ny].iter().map(|&l| chaos_grey(l, encoding)).collect();
        let img = image::GrayImage::from_raw(nx as u32, ny as u32, grey).expect("plane size");
        crate::render::save_png(&ground.join(format!("liver_GT_{k:03}.png")), &img)?;
    }
    Ok(())
}

/// A synthetic data set of `cases` phantoms (seeds seed, seed+1, ...) in `kind`'s layout under `out`:
/// FLARE22 NIfTI, CHAOS CT/MR DICOM series (written by dicom-rs) with PNG masks, or images/ + labels/
/// pairs. CHAOS-MR cases hold the MR phantoms of the same seed: T1 in phase and opposed phase (T1DUAL)
/// and T2-SPIR, on one grid.
pub fn write_synthetic(
    kind: DatasetKind,
    out: &Path,
    seed: u64,
    cases: usize,
    size: usize,
    slices: usize,
) -> Result<()> {
    for i in 0..cases {
        let s = seed + i as u64;
        match kind {
            DatasetKind::Flare22 | DatasetKind::Pairs => {
                let p = crate::phantom::generate(s, size, slices);
                let hu: Vec<i16> = p.image.data.iter().map(|&v| v as i16).collect();
                let (images, labels) =
                    if kind == DatasetKind::Flare22 { ("imagesTr", "labelsTr") } else { ("images", "labels") };
                let id = format!("case_{:04}", i + 1);
                let (image_dir, label_dir) = (out.join(images), out.join(labels));
                for d in [&image_dir, &label_dir] {
                    std::fs::create_dir_all(d).with_context(|| format!("{}: cannot create folder", d.display()))?;
                }
                io::nifti::write_like(&image_dir.join(format!("{id}_0000.nii.gz")), &p.image, &hu)?;
                io::nifti::write_like(&label_dir.join(format!("{id}.nii.gz")), &p.image, &p.labels)?;
            }
            DatasetKind::ChaosCt => {
                let p = crate::phantom::generate(s, size, slices);
                let case = out.join("CT").join(format!("{}", i + 1));
                write_series_with_masks(
                    &p.image,
                    &p.labels,
                    &case,
                    &case.join("DICOM_anon"),
                    "i",
                    PngEncoding::ChaosCt,
                    s,
                )?;
            }
            DatasetKind::ChaosMr => {
                let case = out.join("MR").join(format!("{}", i + 1));
                let sequences = [Sequence::T1InPhase, Sequence::T1OpposedPhase, Sequence::T2Spir];
                let (images, labels) = crate::phantom::generate_mr_series(s, size, slices, &sequences);
                let [in_phase, opposed, t2spir] = &images[..] else { unreachable!("one image per sequence") };
                let (t1, t2) = (case.join("T1DUAL"), case.join("T2SPIR"));
                write_series_with_masks(
                    in_phase,
                    &labels,
                    &t1,
                    &t1.join("DICOM_anon").join("InPhase"),
                    "IMG-0001-",
                    PngEncoding::ChaosMr,
                    3 * s,
                )?;
                dicom::write_series(opposed, &t1.join("DICOM_anon").join("OutPhase"), "IMG-0002-", "MR", 3 * s + 1)?;
                write_series_with_masks(
                    t2spir,
                    &labels,
                    &t2,
                    &t2.join("DICOM_anon"),
                    "IMG-0003-",
                    PngEncoding::ChaosMr,
                    3 * s + 2,
                )?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order_compares_numbers_by_value() {
        let mut v = vec!["case10", "case2", "case1", "case02b", "Case3"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(v, ["Case3", "case1", "case2", "case02b", "case10"]);
    }

    #[test]
    fn shards_cover_every_case_once() {
        let cases: Vec<CaseEntry> = (0..7)
            .map(|i| CaseEntry { id: format!("c{i}"), image: PathBuf::new(), labels: LabelSource::None, mr: false })
            .collect();
        let mut seen: Vec<String> = (1..=3).flat_map(|i| shard(cases.clone(), (i, 3))).map(|c| c.id).collect();
        seen.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(seen, cases.iter().map(|c| c.id.clone()).collect::<Vec<_>>());
        assert!(parse_shard("0/3").is_err() && parse_shard("4/3").is_err() && parse_shard("x").is_err());
        assert_eq!(parse_shard("2/3").unwrap(), (2, 3));
    }
}
