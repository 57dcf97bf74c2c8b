//! NIfTI-1 volumes (.nii, .nii.gz) through the `nifti` crate, with checks made on the header before any
//! voxel memory is allocated.

use super::{Volume, MAX_VOXELS};
use crate::fail;
use anyhow::{bail, Context, Result};
use nifti::{IntoNdArray, NiftiHeader, NiftiObject, NiftiType};
use std::path::Path;

fn describe(e: &nifti::NiftiError) -> String {
    match e {
        nifti::NiftiError::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => "file is truncated".into(),
        nifti::NiftiError::Io(io) => format!("cannot read ({io})"),
        nifti::NiftiError::IncompatibleLength(got, expected) => {
            format!("file is truncated ({got} of {expected} data bytes present)")
        }
        other => other.to_string(),
    }
}

/// Voxel-to-world affine by the NIfTI-1 rules, as nibabel reads them: the sform when sform_code > 0,
/// else the qform when qform_code > 0 (pixdims taken as absolute values, qfac = -1 only when `pixdim[0]`
/// is negative), else nibabel's base affine (x flipped, centred on the volume). A non-finite or singular
/// affine, or a quaternion of length over 1, is refused: nibabel returns NaN, a singular matrix or raises.
pub fn header_affine(h: &NiftiHeader, dims: [usize; 3]) -> Result<[[f64; 4]; 4]> {
    let mut a = [[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]];
    let zooms = [1, 2, 3].map(|i| (h.pixdim[i] as f64).abs());
    let source = if h.sform_code > 0 {
        for (r, row) in [h.srow_x, h.srow_y, h.srow_z].iter().enumerate() {
            a[r] = row.map(|v| v as f64);
        }
        "sform"
    } else if h.qform_code > 0 {
        let (b, c, d) = (h.quatern_b as f64, h.quatern_c as f64, h.quatern_d as f64);
        let w2 = 1.0 - (b * b + c * c + d * d);
        // f32 rounding of a unit quaternion can leave w2 slightly negative (nibabel's threshold).
        if w2.is_nan() || w2 < -3.0 * f32::EPSILON as f64 {
            bail!("qform quaternion (b, c, d) = ({b}, {c}, {d}) is longer than 1: not a rotation");
        }
        let aa = w2.max(0.0).sqrt();
        let rot = [
            [aa * aa + b * b - c * c - d * d, 2.0 * (b * c - aa * d), 2.0 * (b * d + aa * c)],
            [2.0 * (b * c + aa * d), aa * aa + c * c - b * b - d * d, 2.0 * (c * d - aa * b)],
            [2.0 * (b * d - aa * c), 2.0 * (c * d + aa * b), aa * aa + d * d - b * b - c * c],
        ];
        let qfac = if h.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
        let scale = [zooms[0], zooms[1], zooms[2] * qfac];
        let offset = [h.quatern_x as f64, h.quatern_y as f64, h.quatern_z as f64];
        for r in 0..3 {
            a[r] = [rot[r][0] * scale[0], rot[r][1] * scale[1], rot[r][2] * scale[2], offset[r]];
        }
        "qform"
    } else {
        // nibabel's get_base_affine: radiological x, origin at the volume's centre.
        let z = zooms.map(|v| if v > 0.0 { v } else { 1.0 });
        let centre = |i: usize| (dims[i] as f64 - 1.0) / 2.0;
        a[0] = [-z[0], 0.0, 0.0, centre(0) * z[0]];
        a[1] = [0.0, z[1], 0.0, -centre(1) * z[1]];
        a[2] = [0.0, 0.0, z[2], -centre(2) * z[2]];
        "pixdim"
    };
    if a.iter().flatten().any(|v| !v.is_finite()) {
        bail!("the {source} affine holds non-finite values");
    }
    let m = |r: usize, c: usize| a[r][c];
    let det = m(0, 0) * (m(1, 1) * m(2, 2) - m(1, 2) * m(2, 1)) - m(0, 1) * (m(1, 0) * m(2, 2) - m(1, 2) * m(2, 0))
        + m(0, 2) * (m(1, 0) * m(2, 1) - m(1, 1) * m(2, 0));
    if det.abs() < 1e-12 {
        bail!("the {source} affine is singular (determinant {det}): voxels have no positions");
    }
    Ok(a)
}

/// The file as a byte stream: gzip (any number of members, as Python's gzip reads them) when `gz` (the
/// magic bytes, see `is_gzip`, whatever the name says), else the raw bytes.
fn open_stream(path: &Path, gz: bool) -> Result<Box<dyn std::io::Read>> {
    let file =
        std::io::BufReader::new(std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?);
    Ok(if gz { Box::new(flate2::read::MultiGzDecoder::new(file)) } else { Box::new(file) })
}

/// Whether the file starts with the gzip magic bytes.
fn is_gzip(path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut magic = [0u8; 2];
    Ok(file.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b])
}

/// Reads a 3-D NIfTI volume (a 4-D file with one time point is accepted) with scl_slope/inter applied.
pub fn read(path: &Path) -> Result<Volume> {
    let p = path.display();
    let gz = is_gzip(path)?;
    let header = NiftiHeader::from_reader(open_stream(path, gz)?)
        .map_err(|e| anyhow::anyhow!("{p}: not a readable NIfTI-1 file ({})", describe(&e)))?;
    let dim = header.dim().map_err(|e| anyhow::anyhow!("{p}: invalid dimensions in header ({e})"))?.to_vec();
    let dims: [usize; 3] = match dim.len() {
        2 => [dim[0] as usize, dim[1] as usize, 1],
        3 => [dim[0] as usize, dim[1] as usize, dim[2] as usize],
        n if n >= 4 && dim[3..].iter().all(|&d| d == 1) => [dim[0] as usize, dim[1] as usize, dim[2] as usize],
        n => fail!(Unsupported, "{p}: {n}-D volume of shape {dim:?}; xaiclip reads 3-D volumes (one time point)"),
    };
    let voxels: usize = dims.iter().product();
    if voxels == 0 || voxels > MAX_VOXELS {
        bail!("{p}: volume of {dims:?} voxels is outside the supported range (1 to {MAX_VOXELS} voxels)");
    }
    let datatype = header.data_type().map_err(|_| anyhow::anyhow!("{p}: unknown datatype code {}", header.datatype))?;
    if !matches!(
        datatype,
        NiftiType::Uint8
            | NiftiType::Int8
            | NiftiType::Uint16
            | NiftiType::Int16
            | NiftiType::Uint32
            | NiftiType::Int32
            | NiftiType::Float32
            | NiftiType::Float64
    ) {
        fail!(
            Unsupported,
            "{p}: unsupported datatype {datatype:?} (supported: integer types up to 32 bits, float32, float64)"
        );
    }
    // The crate sizes its read buffer from bitpix: a header whose bitpix disagrees with its datatype
    // made it allocate tens of GiB (found by fuzzing).
    if header.bitpix as usize != 8 * datatype.size_of() {
        bail!("{p}: bitpix {} does not match datatype {datatype:?} ({} bits)", header.bitpix, 8 * datatype.size_of());
    }
    let needed = (header.vox_offset.max(352.0) as u64).saturating_add((voxels * datatype.size_of()) as u64);
    if !gz {
        let len = std::fs::metadata(path).with_context(|| format!("{p}: cannot open"))?.len();
        if len < needed {
            bail!("{p}: file is truncated ({len} bytes; the header's dimensions need {needed})");
        }
    }
    let object = nifti::InMemNiftiObject::from_reader(open_stream(path, gz)?).map_err(|e| match e {
        nifti::NiftiError::NoVolumeData => {
            anyhow::anyhow!("{p}: a header-only NIfTI pair (.hdr/.img); give a single .nii or .nii.gz")
        }
        e => anyhow::anyhow!("{p}: {}", describe(&e)),
    })?;
    // Read raw values, then scale here: the crate would also scale with a NaN slope, which real files
    // (this project's reference CT among them) carry to mean "no scaling".
    let mut raw_header = object.header().clone();
    raw_header.scl_slope = 0.0;
    let mut raw = object.into_volume().into_raw_data();
    // The crate panics on voxel data of the wrong length (found by fuzzing): check it here.
    let expected = voxels * datatype.size_of();
    if raw.len() < expected {
        bail!("{p}: file is truncated ({} of {expected} bytes of voxel data present)", raw.len());
    }
    raw.truncate(expected);
    let volume = nifti::InMemNiftiVolume::from_raw_data(&raw_header, raw)
        .map_err(|e| anyhow::anyhow!("{p}: {}", describe(&e)))?;
    let array = volume.into_ndarray::<f32>().map_err(|e| anyhow::anyhow!("{p}: {}", describe(&e)))?;
    let mut data: Vec<f32> = array.t().iter().copied().collect();
    let (slope, inter) = (header.scl_slope, header.scl_inter);
    if slope.is_finite() && slope != 0.0 && (slope != 1.0 || inter != 0.0) {
        let inter = if inter.is_finite() { inter } else { 0.0 };
        data.iter_mut().for_each(|v| *v = *v * slope + inter);
    }
    let affine = header_affine(&header, dims).map_err(|e| anyhow::anyhow!("{p}: {e}"))?;
    Ok(Volume { dims, data, affine, source: path.to_path_buf(), nifti_header: Some(header), modality: None })
}

/// Element types a NIfTI output can hold.
pub trait NiftiElement: nifti::DataElement + bytemuck::Pod {}
impl NiftiElement for u8 {}
impl NiftiElement for i16 {}
impl NiftiElement for f32 {}

/// Writes `data` (x fastest, `like.dims`) as NIfTI with `like`'s geometry: its header fields when it came
/// from NIfTI, otherwise an sform built from its affine. Atomic: see `write_atomically`.
/// The NIfTI file names this writer produces: `.nii` or `.nii.gz` (any case; `.gz` means gzip). Anything
/// else is refused, so the data can never land in a file of another name (the nifti crate writes a
/// .hdr/.img pair for other names).
pub fn output_suffix(path: &Path) -> Result<&'static str> {
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    if name.ends_with(".nii.gz") && name.len() > 7 {
        Ok(".nii.gz")
    } else if name.ends_with(".nii") && name.len() > 4 {
        Ok(".nii")
    } else {
        fail!(InvalidInput, "{}: a NIfTI output must be named *.nii or *.nii.gz", path.display())
    }
}

/// Writes `data` (on `like`'s grid) as a NIfTI volume with `like`'s geometry, atomically.
pub fn write_like<T: NiftiElement>(path: &Path, like: &Volume, data: &[T]) -> Result<()> {
    let mut staging = super::Staging::new();
    stage_like(&mut staging, path, like, data)?;
    staging.commit()
}

/// Stages the NIfTI volume `data` for `path` (see `io::Staging`).
pub fn stage_like<T: NiftiElement>(staging: &mut super::Staging, path: &Path, like: &Volume, data: &[T]) -> Result<()> {
    let suffix = output_suffix(path)?;
    let [nx, ny, nz] = like.dims;
    if data.len() != nx * ny * nz {
        bail!("{}: {} values do not fill a {nx}x{ny}x{nz} volume", path.display(), data.len());
    }
    let header = match &like.nifti_header {
        Some(h) => {
            let mut h = h.clone();
            // A label or saliency volume is stored as-is: no intensity scaling, no intent from the source.
            h.scl_slope = 1.0;
            h.scl_inter = 0.0;
            h.cal_min = 0.0;
            h.cal_max = 0.0;
            h
        }
        None => header_from_affine(&like.affine),
    };
    // Fortran order: shape (nx, ny, nz) with x fastest, exactly our layout.
    use ndarray::ShapeBuilder;
    let array = ndarray::Array::from_shape_vec((nx, ny, nz).f(), data.to_vec())?;
    staging.stage(path, suffix, |tmp| {
        nifti::writer::WriterOptions::new(tmp)
            .reference_header(&header)
            .write_nifti(&array)
            .map_err(|e| anyhow::anyhow!("{}: cannot write NIfTI ({e})", path.display()))
    })
}

fn header_from_affine(affine: &[[f64; 4]; 4]) -> NiftiHeader {
    let mut h = NiftiHeader { sform_code: 1, qform_code: 0, xyzt_units: 2, ..Default::default() };
    h.srow_x = affine[0].map(|v| v as f32);
    h.srow_y = affine[1].map(|v| v as f32);
    h.srow_z = affine[2].map(|v| v as f32);
    h.pixdim = [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0];
    for (c, p) in h.pixdim[1..4].iter_mut().enumerate() {
        *p = (0..3).map(|r| affine[r][c].powi(2)).sum::<f64>().sqrt() as f32;
    }
    h
}
