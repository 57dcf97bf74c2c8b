//! DICOM CT/MR series: one folder, one slice per file (dicom-rs). Slices are sorted by their position
//! along the slice normal, rescaled to physical units, and given a RAS+ affine from
//! ImagePositionPatient / ImageOrientationPatient / PixelSpacing.

use super::{Volume, MAX_VOXELS};
use crate::fail;
use anyhow::{bail, Context, Result};
use dicom_dictionary_std::tags;
use dicom_object::{open_file, DefaultDicomObject};
use dicom_pixeldata::PixelDecoder;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

struct Slice {
    path: PathBuf,
    position: [f64; 3],
    /// Position along the slice normal: the sort key.
    distance: f64,
    pixels: Vec<f32>,
}

struct Geometry {
    rows: usize,
    cols: usize,
    row_dir: [f64; 3],
    col_dir: [f64; 3],
    /// (spacing between rows, spacing between columns), as PixelSpacing stores them.
    spacing: [f64; 2],
}

fn floats(obj: &DefaultDicomObject, tag: dicom_object::Tag, name: &str, n: usize, path: &Path) -> Result<Vec<f64>> {
    let v = obj
        .element(tag)
        .map_err(|_| anyhow::anyhow!("{}: missing {name}", path.display()))?
        .to_multi_float64()
        .map_err(|e| anyhow::anyhow!("{}: unreadable {name} ({e})", path.display()))?;
    if v.len() < n || v.iter().any(|x| !x.is_finite()) {
        bail!("{}: {name} must hold {n} finite numbers, got {v:?}", path.display());
    }
    Ok(v)
}

fn optional_float(obj: &DefaultDicomObject, tag: dicom_object::Tag, default: f64) -> f64 {
    obj.element(tag).ok().and_then(|e| e.to_float64().ok()).filter(|v| v.is_finite()).unwrap_or(default)
}

fn int(obj: &DefaultDicomObject, tag: dicom_object::Tag, name: &str, path: &Path) -> Result<usize> {
    obj.element(tag)
        .map_err(|_| anyhow::anyhow!("{}: missing {name}", path.display()))?
        .to_int::<u32>()
        .map(|v| v as usize)
        .map_err(|e| anyhow::anyhow!("{}: unreadable {name} ({e})", path.display()))
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a.iter().zip(&b).map(|(x, y)| x * y).sum()
}

fn geometry(obj: &DefaultDicomObject, path: &Path) -> Result<Geometry> {
    let iop = floats(obj, tags::IMAGE_ORIENTATION_PATIENT, "ImageOrientationPatient", 6, path)?;
    let spacing = floats(obj, tags::PIXEL_SPACING, "PixelSpacing", 2, path)?;
    if spacing[0] <= 0.0 || spacing[1] <= 0.0 {
        bail!("{}: PixelSpacing must be positive, got {spacing:?}", path.display());
    }
    Ok(Geometry {
        rows: int(obj, tags::ROWS, "Rows", path)?,
        cols: int(obj, tags::COLUMNS, "Columns", path)?,
        row_dir: [iop[0], iop[1], iop[2]],
        col_dir: [iop[3], iop[4], iop[5]],
        spacing: [spacing[0], spacing[1]],
    })
}

/// Decoded, rescaled pixels of one single-frame greyscale slice (any transfer syntax dicom-rs decodes,
/// JPEG 2000 and JPEG lossless included).
fn pixels(obj: &DefaultDicomObject, g: &Geometry, path: &Path) -> Result<Vec<f32>> {
    // Uncompressed pixel data shorter than Rows x Columns x BitsAllocated is refused before decoding:
    // otherwise a small file claiming a huge image costs gigabytes (found by fuzzing).
    let bits = int(obj, tags::BITS_ALLOCATED, "BitsAllocated", path)?;
    if let Ok(element) = obj.element(tags::PIXEL_DATA) {
        if let dicom_core::value::Value::Primitive(v) = element.value() {
            let needed = g.rows * g.cols * bits.div_ceil(8);
            let have = v.calculate_byte_len();
            if have < needed {
                bail!(
                    "{}: pixel data holds {have} bytes, {}x{} pixels of {bits} bits need {needed} (truncated)",
                    path.display(),
                    g.rows,
                    g.cols
                );
            }
        }
    }
    let decoded =
        obj.decode_pixel_data().map_err(|e| anyhow::anyhow!("{}: cannot decode pixel data ({e})", path.display()))?;
    if decoded.number_of_frames() != 1 || decoded.samples_per_pixel() != 1 {
        bail!(
            "{}: {} frames of {} samples per pixel; xaiclip reads single-frame greyscale slices",
            path.display(),
            decoded.number_of_frames(),
            decoded.samples_per_pixel()
        );
    }
    let n = g.rows * g.cols;
    let signed = decoded.pixel_representation() == dicom_pixeldata::PixelRepresentation::Signed;
    let raw = decoded.data();
    let values: Vec<f32> = match (decoded.bits_allocated(), signed) {
        (8, false) => raw.iter().map(|&b| b as f32).collect(),
        (8, true) => raw.iter().map(|&b| b as i8 as f32).collect(),
        (16, false) => raw.chunks_exact(2).map(|b| u16::from_ne_bytes([b[0], b[1]]) as f32).collect(),
        (16, true) => raw.chunks_exact(2).map(|b| i16::from_ne_bytes([b[0], b[1]]) as f32).collect(),
        (32, false) => raw.chunks_exact(4).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as f32).collect(),
        (32, true) => raw.chunks_exact(4).map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as f32).collect(),
        (bits, _) => fail!(Unsupported, "{}: {bits} bits allocated per pixel is not supported", path.display()),
    };
    if values.len() < n {
        bail!("{}: pixel data holds {} of {n} pixels (truncated)", path.display(), values.len());
    }
    let slope = optional_float(obj, tags::RESCALE_SLOPE, 1.0);
    let intercept = optional_float(obj, tags::RESCALE_INTERCEPT, 0.0);
    Ok(values[..n].iter().map(|v| (*v as f64 * slope + intercept) as f32).collect())
}

/// Reads every DICOM file in `dir` (dot-files skipped) as one series.
pub fn read_series(dir: &Path) -> Result<Volume> {
    read_series_with_files(dir).map(|(volume, _)| volume)
}

/// The series and, for each volume slice k (sorted along the normal), the file it came from: masks
/// stored per file (CHAOS PNGs) are placed through this.
pub fn read_series_with_files(dir: &Path) -> Result<(Volume, Vec<PathBuf>)> {
    let d = dir.display();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{d}: cannot list folder"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{d}: folder holds no DICOM files");
    }
    let mut series: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    let mut objects = Vec::with_capacity(files.len());
    for f in &files {
        check_declared_lengths(f)?;
        let obj = open_file(f).map_err(|e| anyhow::anyhow!("{}: not a readable DICOM file ({e})", f.display()))?;
        let uid = obj
            .element(tags::SERIES_INSTANCE_UID)
            .ok()
            .and_then(|e| e.to_str().ok().map(|s| s.trim_end_matches('\0').trim().to_string()))
            .unwrap_or_default();
        series.entry(uid).or_default().push(f.clone());
        objects.push(obj);
    }
    if series.len() > 1 {
        let list: Vec<String> =
            series.iter().map(|(uid, fs)| format!("{uid} ({} files, e.g. {})", fs.len(), fs[0].display())).collect();
        bail!("{d}: folder mixes {} series; give one series per folder: {}", series.len(), list.join("; "));
    }
    let g = geometry(&objects[0], &files[0])?;
    if g.rows == 0 || g.cols == 0 || g.rows * g.cols * files.len() > MAX_VOXELS {
        bail!(
            "{d}: {} slices of {}x{} pixels is outside the supported size (up to {MAX_VOXELS} voxels)",
            files.len(),
            g.rows,
            g.cols
        );
    }
    let normal = cross(g.row_dir, g.col_dir);
    let mut slices = Vec::with_capacity(files.len());
    for (obj, path) in objects.iter().zip(&files) {
        let gi = geometry(obj, path)?;
        if (gi.rows, gi.cols) != (g.rows, g.cols)
            || (0..3)
                .any(|i| (gi.row_dir[i] - g.row_dir[i]).abs() > 1e-4 || (gi.col_dir[i] - g.col_dir[i]).abs() > 1e-4)
        {
            bail!("{}: size or orientation differs from {} in the same series", path.display(), files[0].display());
        }
        if (0..2).any(|i| (gi.spacing[i] - g.spacing[i]).abs() > 1e-4 * g.spacing[i].max(1.0)) {
            bail!(
                "{}: PixelSpacing {:?} differs from {:?} in {} of the same series",
                path.display(),
                gi.spacing,
                g.spacing,
                files[0].display()
            );
        }
        let p = floats(obj, tags::IMAGE_POSITION_PATIENT, "ImagePositionPatient", 3, path)?;
        let position = [p[0], p[1], p[2]];
        slices.push(Slice {
            path: path.clone(),
            position,
            distance: dot(position, normal),
            pixels: pixels(obj, &g, path)?,
        });
    }
    slices.sort_by(|a, b| a.distance.total_cmp(&b.distance));
    for pair in slices.windows(2) {
        if (pair[1].distance - pair[0].distance).abs() < 1e-3 {
            bail!("{} and {}: two slices at the same position", pair[0].path.display(), pair[1].path.display());
        }
    }
    // Evenly spaced slices only: a gap (a missing file) or uneven spacing has no single affine, and
    // averaging would misplace every slice (ITK refuses such series too).
    let gaps: Vec<f64> = slices.windows(2).map(|p| p[1].distance - p[0].distance).collect();
    if let Some(&first) = gaps.first() {
        let tolerance = (0.01 * first).max(0.01);
        if let Some(i) = gaps.iter().position(|g| (g - first).abs() > tolerance) {
            bail!(
                "{}: slices are not evenly spaced: {:.3} mm between {} and {}, but {:.3} mm between {} and {} (a missing slice?)",
                dir.display(),
                first,
                slices[0].path.display(),
                slices[1].path.display(),
                gaps[i],
                slices[i].path.display(),
                slices[i + 1].path.display()
            );
        }
    }
    // Third axis: the average step between slices (handles gantry tilt and either slice direction).
    let n = slices.len();
    let step = if n > 1 {
        let (a, b) = (slices[0].position, slices[n - 1].position);
        [(b[0] - a[0]) / (n - 1) as f64, (b[1] - a[1]) / (n - 1) as f64, (b[2] - a[2]) / (n - 1) as f64]
    } else {
        let thickness = optional_float(&objects[0], tags::SLICE_THICKNESS, 1.0);
        normal.map(|v| v * thickness)
    };
    let origin = slices[0].position;
    // DICOM patient space is LPS; NIfTI's is RAS: negate x and y.
    let lps_to_ras = [-1.0, -1.0, 1.0];
    let mut affine = [[0.0; 4]; 4];
    for r in 0..3 {
        affine[r] = [
            lps_to_ras[r] * g.row_dir[r] * g.spacing[1],
            lps_to_ras[r] * g.col_dir[r] * g.spacing[0],
            lps_to_ras[r] * step[r],
            lps_to_ras[r] * origin[r],
        ];
    }
    affine[3][3] = 1.0;
    let mut data = Vec::with_capacity(g.rows * g.cols * n);
    for s in &slices {
        data.extend_from_slice(&s.pixels);
    }
    let files = slices.into_iter().map(|s| s.path).collect();
    let modality = objects[0]
        .element(tags::MODALITY)
        .ok()
        .and_then(|e| e.to_str().ok().map(|s| s.trim_end_matches('\0').trim().to_uppercase()))
        .filter(|m| !m.is_empty());
    let volume =
        Volume { dims: [g.cols, g.rows, n], data, affine, source: dir.to_path_buf(), nifti_header: None, modality };
    Ok((volume, files))
}

/// Refuses a file in which an element declares more bytes than the file holds, before dicom-rs reads
/// it: dicom-rs allocates (and zero-fills) a declared length of up to 4 GiB before finding the file too
/// short, so a few bytes could take gigabytes. Walks the file meta group, then the data set in its
/// transfer syntax (implicit or explicit VR, little or big endian; a deflated data set is inflated first,
/// up to a cap), into items and sequences (pixel fragments are skipped whole), reading every header as
/// dicom-rs does.
fn check_declared_lengths(path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    // dicom-rs finds "DICM" after a 128-byte preamble or, without one, at the very start.
    let meta_start = if bytes.len() >= 132 && &bytes[128..132] == b"DICM" {
        132
    } else if bytes.starts_with(b"DICM") {
        4
    } else {
        return Ok(());
    };
    let meta = Encoding { explicit: true, big_endian: false };
    let walked = walk_elements(path, &bytes, meta_start, meta, true)?;
    let start = walked.end;
    match walked.transfer_syntax.as_deref() {
        Some("1.2.840.10008.1.2") => {
            walk_elements(path, &bytes, start, Encoding { explicit: false, big_endian: false }, false)?;
        }
        Some("1.2.840.10008.1.2.2") => {
            walk_elements(path, &bytes, start, Encoding { explicit: true, big_endian: true }, false)?;
        }
        Some("1.2.840.10008.1.2.1.99") => {
            // A deflated data set: check the inflated bytes (capped, so a deflate bomb cannot stall here).
            use std::io::Read;
            const CAP: u64 = 1 << 30;
            let mut inflated = Vec::new();
            flate2::read::DeflateDecoder::new(&bytes[start.min(bytes.len())..])
                .take(CAP)
                .read_to_end(&mut inflated)
                .with_context(|| format!("{}: the deflated data set does not inflate", path.display()))?;
            walk_elements(path, &inflated, 0, meta, false)?;
        }
        _ => {
            walk_elements(path, &bytes, start, meta, false)?;
        }
    }
    Ok(())
}

#[derive(Clone, Copy)]
struct Encoding {
    explicit: bool,
    big_endian: bool,
}

/// Where a walk stopped and, for the meta group, the transfer syntax it named.
struct Walked {
    end: usize,
    transfer_syntax: Option<String>,
}

/// Walks elements from `pos`: the meta group only (stopping at the first other group) when `meta`,
/// else to the end. Refuses declared lengths beyond the end, binary values of partial units, and a meta
/// group whose length element disagrees with its elements (dicom-rs starts the data set there).
fn walk_elements(path: &Path, bytes: &[u8], mut pos: usize, enc: Encoding, meta: bool) -> Result<Walked> {
    const UNDEFINED: u32 = u32::MAX;
    let u16_at = |p: usize| {
        let b = [bytes[p], bytes[p + 1]];
        if enc.big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        }
    };
    let u32_at = |p: usize| {
        let b = [bytes[p], bytes[p + 1], bytes[p + 2], bytes[p + 3]];
        if enc.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    };
    let too_long = |group: u16, element: u16, len: u64, left: usize| {
        anyhow::anyhow!(
            "{}: element ({group:04X},{element:04X}) declares {len} bytes but the file has {left} left (truncated or corrupt)",
            path.display()
        )
    };
    // Inside encapsulated pixel data, items are raw fragments (skipped whole); elsewhere they hold
    // elements, which are walked too.
    let mut in_fragments = false;
    let mut meta_end = None;
    let mut transfer_syntax = None;
    while pos + 8 <= bytes.len() {
        let (group, element) = (u16_at(pos), u16_at(pos + 2));
        if meta && group != 0x0002 {
            if let Some(end) = meta_end.filter(|&end| end != pos) {
                bail!(
                    "{}: the file meta group's length says it ends at byte {end}, but its elements end at byte {pos}",
                    path.display()
                );
            }
            break;
        }
        if group == 0xFFFE {
            // Item or delimiter: a tag and a 4-byte length in every encoding.
            let len = u32_at(pos + 4);
            pos += 8;
            if element == 0xE0DD {
                in_fragments = false;
            }
            if len != UNDEFINED {
                if len as usize > bytes.len() - pos {
                    return Err(too_long(group, element, len as u64, bytes.len() - pos));
                }
                if in_fragments {
                    pos += len as usize;
                }
            }
            continue;
        }
        let vr = &bytes[pos + 4..pos + 6];
        let sequence = enc.explicit && vr == b"SQ";
        let (len, header) = if enc.explicit {
            // The VRs with a 2-byte length; any other, an unknown one included, has a 4-byte length
            // after 2 reserved bytes, which is how dicom-rs reads it too.
            let short = matches!(
                vr,
                b"AE"
                    | b"AS"
                    | b"AT"
                    | b"CS"
                    | b"DA"
                    | b"DS"
                    | b"DT"
                    | b"FL"
                    | b"FD"
                    | b"IS"
                    | b"LO"
                    | b"LT"
                    | b"PN"
                    | b"SH"
                    | b"SL"
                    | b"SS"
                    | b"ST"
                    | b"TM"
                    | b"UI"
                    | b"UL"
                    | b"US"
            );
            if short {
                (u16_at(pos + 6) as u32, 8)
            } else {
                if pos + 12 > bytes.len() {
                    break;
                }
                (u32_at(pos + 8), 12)
            }
        } else {
            (u32_at(pos + 4), 8)
        };
        pos += header;
        if len == UNDEFINED {
            // A sequence or encapsulated pixel data: its items follow.
            in_fragments = (group, element) == (0x7FE0, 0x0010);
            continue;
        }
        if len as usize > bytes.len() - pos {
            return Err(too_long(group, element, len as u64, bytes.len() - pos));
        }
        // Binary values come in whole units; dicom-rs reads a partial one past the value and then
        // misreads the following headers (found by fuzzing: gigabytes from one such element).
        let unit = match vr {
            _ if !enc.explicit => 1,
            b"SS" | b"US" | b"OW" => 2,
            b"SL" | b"UL" | b"FL" | b"AT" | b"OL" | b"OF" => 4,
            b"FD" | b"SV" | b"UV" | b"OD" | b"OV" => 8,
            _ => 1,
        };
        if len % unit != 0 {
            bail!(
                "{}: element ({group:04X},{element:04X}) of VR {} has {len} bytes, not a multiple of {unit}",
                path.display(),
                String::from_utf8_lossy(vr)
            );
        }
        if meta && element == 0x0000 && len == 4 {
            meta_end = Some(pos + 4 + u32_at(pos) as usize);
        }
        if meta && element == 0x0010 {
            let uid = String::from_utf8_lossy(&bytes[pos..pos + len as usize]);
            transfer_syntax = Some(uid.trim_end_matches(['\0', ' ']).to_string());
        }
        // A sequence of defined length holds items of elements: walk into it.
        if !sequence {
            pos += len as usize;
        }
    }
    Ok(Walked { end: pos, transfer_syntax })
}

/// Writes `volume` as a DICOM series, one explicit-VR little-endian file per slice named
/// `{prefix}{k+1:05}.dcm` in slice order, int16 pixels with rescale slope 1 and intercept 0: what
/// `read_series` reads back voxel for voxel. `modality` is "CT" or "MR"; `uid_seed` makes the UIDs.
pub fn write_series(volume: &Volume, dir: &Path, prefix: &str, modality: &str, uid_seed: u64) -> Result<()> {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
    let [nx, ny, nz] = volume.dims;
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create folder", dir.display()))?;
    let a = volume.affine;
    let ras_to_lps = [-1.0, -1.0, 1.0];
    let column = |c: usize| -> [f64; 3] { std::array::from_fn(|r| ras_to_lps[r] * a[r][c]) };
    let norm = |v: [f64; 3]| dot(v, v).sqrt();
    let (along_row, along_col, step, origin) = (column(0), column(1), column(2), column(3));
    let (col_spacing, row_spacing) = (norm(along_row), norm(along_col));
    let unit = |v: [f64; 3], n: f64| v.map(|x| x / n);
    let (row_dir, col_dir) = (unit(along_row, col_spacing), unit(along_col, row_spacing));
    let ds = |v: &[f64]| PrimitiveValue::from(v.iter().map(|x| format!("{x:.6}")).collect::<Vec<_>>().join("\\"));
    // "2.25.<integer>" UIDs: valid without an organisation root.
    let uid = |kind: u64, k: usize| format!("2.25.{}{:03}{:05}", uid_seed % 1_000_000_007 + 1, kind, k);
    let sop_class = if modality == "MR" { "1.2.840.10008.5.1.4.1.1.4" } else { "1.2.840.10008.5.1.4.1.1.2" };
    for k in 0..nz {
        let mut obj = InMemDicomObject::new_empty();
        let mut put = |tag, vr, value: PrimitiveValue| {
            obj.put(DataElement::new(tag, vr, value));
        };
        put(tags::SOP_CLASS_UID, VR::UI, sop_class.into());
        put(tags::SOP_INSTANCE_UID, VR::UI, uid(3, k).into());
        put(tags::STUDY_INSTANCE_UID, VR::UI, uid(1, 0).into());
        put(tags::SERIES_INSTANCE_UID, VR::UI, uid(2, 0).into());
        put(tags::MODALITY, VR::CS, modality.into());
        put(tags::PATIENT_ID, VR::LO, format!("xaiclip-{uid_seed}").into());
        put(tags::INSTANCE_NUMBER, VR::IS, format!("{}", k + 1).into());
        let position: Vec<f64> = (0..3).map(|r| origin[r] + k as f64 * step[r]).collect();
        put(tags::IMAGE_POSITION_PATIENT, VR::DS, ds(&position));
        put(
            tags::IMAGE_ORIENTATION_PATIENT,
            VR::DS,
            ds(&[row_dir[0], row_dir[1], row_dir[2], col_dir[0], col_dir[1], col_dir[2]]),
        );
        put(tags::PIXEL_SPACING, VR::DS, ds(&[row_spacing, col_spacing]));
        put(tags::SLICE_THICKNESS, VR::DS, ds(&[norm(step)]));
        put(tags::ROWS, VR::US, PrimitiveValue::from(ny as u16));
        put(tags::COLUMNS, VR::US, PrimitiveValue::from(nx as u16));
        put(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16));
        put(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2".into());
        put(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16u16));
        put(tags::BITS_STORED, VR::US, PrimitiveValue::from(16u16));
        put(tags::HIGH_BIT, VR::US, PrimitiveValue::from(15u16));
        put(tags::PIXEL_REPRESENTATION, VR::US, PrimitiveValue::from(1u16));
        put(tags::RESCALE_INTERCEPT, VR::DS, ds(&[0.0]));
        put(tags::RESCALE_SLOPE, VR::DS, ds(&[1.0]));
        let plane = &volume.data[k * nx * ny..(k + 1) * nx * ny];
        let bytes: Vec<u8> = plane
            .iter()
            .flat_map(|&v| (v.round().clamp(i16::MIN as f32, i16::MAX as f32) as i16).to_le_bytes())
            .collect();
        put(tags::PIXEL_DATA, VR::OW, PrimitiveValue::from(bytes));
        let meta = FileMetaTableBuilder::new()
            .transfer_syntax("1.2.840.10008.1.2.1")
            .media_storage_sop_class_uid(sop_class)
            .media_storage_sop_instance_uid(uid(3, k));
        let file =
            obj.with_meta(meta).map_err(|e| anyhow::anyhow!("{}: cannot build DICOM meta ({e})", dir.display()))?;
        let path = dir.join(format!("{prefix}{:05}.dcm", k + 1));
        super::write_atomically(&path, |tmp| {
            file.write_to_file(tmp).map_err(|e| anyhow::anyhow!("{}: cannot write ({e})", path.display()))
        })?;
    }
    Ok(())
}
