//! Medical image input and output: NIfTI-1 volumes, DICOM CT/MR series, atomic output files.
//!
//! Everything becomes a `Volume`: voxels as f32 in physical units (HU for CT) with x fastest, and the
//! voxel-to-world affine in NIfTI's RAS+ millimetre convention, whatever the source format.

pub mod dicom;
pub mod nifti;

use crate::error::Error;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Refuse volumes above this many voxels before allocating (a 1024 x 1024 x 1024 scan is 2^30).
pub const MAX_VOXELS: usize = 1 << 30;

/// The NIfTI header of the source file, kept so outputs copy its geometry field for field.
pub type NiftiHeader = ::nifti::NiftiHeader;

#[derive(Clone, Debug)]
/// A 3-D image: values in physical units, x fastest, with its voxel-to-world affine (RAS+ mm).
pub struct Volume {
    /// (nx, ny, nz) voxel counts; data index is x + nx * (y + ny * z).
    pub dims: [usize; 3],
    /// Voxel values, x fastest.
    pub data: Vec<f32>,
    /// Voxel (i, j, k) -> RAS+ world millimetres.
    pub affine: [[f64; 4]; 4],
    /// The file or folder it came from (named in errors).
    pub source: PathBuf,
    /// The NIfTI header, for outputs that keep the input's geometry fields.
    pub nifti_header: Option<NiftiHeader>,
    /// The modality the file states (DICOM Modality (0008,0060): "CT", "MR", ...); NIfTI has none.
    pub modality: Option<String>,
}

impl Volume {
    /// Number of voxels.
    pub fn voxel_count(&self) -> usize {
        self.dims.iter().product()
    }

    /// Voxel spacing in mm: the lengths of the affine's first three columns.
    pub fn spacing(&self) -> [f64; 3] {
        std::array::from_fn(|c| (0..3).map(|r| self.affine[r][c].powi(2)).sum::<f64>().sqrt())
    }

    /// Orientation code such as "RAS" or "LPS": for each voxel axis, the world direction it points to.
    pub fn orientation(&self) -> String {
        (0..3)
            .map(|c| {
                let col: Vec<f64> = (0..3).map(|r| self.affine[r][c]).collect();
                let r = (0..3).max_by(|&a, &b| col[a].abs().total_cmp(&col[b].abs())).unwrap_or(0);
                let positive = col[r] >= 0.0;
                ["RL", "AP", "SI"][r].chars().nth(if positive { 0 } else { 1 }).unwrap_or('?')
            })
            .collect()
    }

    /// World RAS+ millimetres of voxel (i, j, k), fractional indices allowed.
    pub fn voxel_to_world(&self, ijk: [f64; 3]) -> [f64; 3] {
        std::array::from_fn(|r| (0..3).map(|c| self.affine[r][c] * ijk[c]).sum::<f64>() + self.affine[r][3])
    }

    /// Fractional voxel index of a world point (inverse of `voxel_to_world`; None for a singular affine).
    pub fn world_to_voxel(&self, xyz: [f64; 3]) -> Option<[f64; 3]> {
        let m = |r: usize, c: usize| self.affine[r][c];
        let det = m(0, 0) * (m(1, 1) * m(2, 2) - m(1, 2) * m(2, 1)) - m(0, 1) * (m(1, 0) * m(2, 2) - m(1, 2) * m(2, 0))
            + m(0, 2) * (m(1, 0) * m(2, 1) - m(1, 1) * m(2, 0));
        if det.abs() < 1e-12 {
            return None;
        }
        let d = [xyz[0] - m(0, 3), xyz[1] - m(1, 3), xyz[2] - m(2, 3)];
        // Cramer's rule: replace column c by d.
        Some(std::array::from_fn(|c| {
            let col = |r: usize, cc: usize| if cc == c { d[r] } else { m(r, cc) };
            (col(0, 0) * (col(1, 1) * col(2, 2) - col(1, 2) * col(2, 1))
                - col(0, 1) * (col(1, 0) * col(2, 2) - col(1, 2) * col(2, 0))
                + col(0, 2) * (col(1, 0) * col(2, 1) - col(1, 1) * col(2, 0)))
                / det
        }))
    }

    /// This label volume resampled (nearest neighbour, through world coordinates) onto `image`'s grid:
    /// label maps stored in another orientation or resolution line up voxel for voxel. Points outside
    /// this volume get 0; their count is returned beside the labels.
    pub fn labels_on_grid_of(&self, image: &Volume) -> (Vec<u8>, usize) {
        let [nx, ny, nz] = image.dims;
        let mut out = vec![0u8; nx * ny * nz];
        let mut outside = 0;
        for k in 0..nz {
            for j in 0..ny {
                for i in 0..nx {
                    let world = image.voxel_to_world([i as f64, j as f64, k as f64]);
                    let Some(v) = self.world_to_voxel(world) else { return (out, nx * ny * nz) };
                    let v = v.map(|x| x.round());
                    if v.iter().zip(self.dims).all(|(&x, d)| x >= 0.0 && x < d as f64) {
                        let [a, b, c] = v.map(|x| x as usize);
                        out[i + nx * (j + ny * k)] =
                            self.data[a + self.dims[0] * (b + self.dims[1] * c)].clamp(0.0, 255.0) as u8;
                    } else {
                        outside += 1;
                    }
                }
            }
        }
        (out, outside)
    }

    /// Distinct label values, ascending (for label volumes).
    pub fn labels_present(&self) -> Vec<i64> {
        let mut seen = std::collections::BTreeSet::new();
        for &v in &self.data {
            seen.insert(v.round() as i64);
        }
        seen.into_iter().collect()
    }

    /// Rejects NaN/Inf voxels with the first offending voxel's index.
    pub fn check_finite(&self) -> Result<()> {
        let bad = self.data.iter().filter(|v| !v.is_finite()).count();
        if let Some(i) = self.data.iter().position(|v| !v.is_finite()) {
            let (nx, ny) = (self.dims[0], self.dims[1]);
            bail!(
                "{}: {bad} voxels are NaN or infinite (first at voxel ({}, {}, {}))",
                self.source.display(),
                i % nx,
                (i / nx) % ny,
                i / (nx * ny)
            );
        }
        Ok(())
    }

    /// Rejects a label volume with fractional or negative values.
    pub fn check_labels(&self) -> Result<()> {
        if let Some(v) = self.data.iter().find(|v| v.fract() != 0.0 || **v < 0.0) {
            bail!(
                "{}: not a label volume (holds the value {v}; labels must be non-negative integers)",
                self.source.display()
            );
        }
        Ok(())
    }
}

/// Reads a NIfTI file or a DICOM series folder, by what the path is.
pub fn read_image(path: &Path) -> Result<Volume> {
    let read = || {
        let meta = std::fs::metadata(path).with_context(|| format!("{}: cannot open", path.display()))?;
        let volume = if meta.is_dir() { dicom::read_series(path)? } else { nifti::read(path)? };
        volume.check_finite()?;
        Ok(volume)
    };
    read().map_err(|e| Error::input(path, e))
}

/// Output files written under temporary names beside their destinations, then renamed into place
/// together by [`Staging::commit`]: a command that writes several files either leaves all of them new or,
/// when any write fails, none (the temporary files are removed on drop). Files get the permissions any
/// new file gets (0666 less the umask).
#[derive(Default)]
pub struct Staging {
    files: Vec<(tempfile::TempPath, PathBuf)>,
}

impl Staging {
    /// Nothing staged yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes the future `path` through `write`, which gets a temporary path in the same folder whose
    /// name ends in `suffix` (writers that pick a format from the name see the right one).
    pub fn stage(&mut self, path: &Path, suffix: &str, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if path.file_name().is_none() || path.is_dir() {
            bail!("{}: not a file path", path.display());
        }
        #[cfg(unix)]
        let permissions = {
            use std::os::unix::fs::PermissionsExt;
            std::fs::Permissions::from_mode(0o666)
        };
        let mut builder = tempfile::Builder::new();
        builder.prefix(".xaiclip-tmp-").suffix(suffix);
        #[cfg(unix)]
        builder.permissions(permissions);
        let tmp = builder
            .tempfile_in(dir)
            .with_context(|| format!("{}: cannot create a file in {}", path.display(), dir.display()))?
            .into_temp_path();
        write(&tmp)?;
        self.files.push((tmp, path.to_path_buf()));
        Ok(())
    }

    /// Moves every staged file into place.
    pub fn commit(self) -> Result<()> {
        for (tmp, path) in self.files {
            tmp.persist(&path).map_err(|e| {
                anyhow::anyhow!("{}: cannot move the finished file into place ({})", path.display(), e.error)
            })?;
        }
        Ok(())
    }
}

/// Creates `path` by writing to a temporary file beside it and renaming it into place, so a failed or
/// interrupted write never leaves a partial output under the final name.
pub fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let mut staging = Staging::new();
    // Keep the full name as suffix: writers pick compression from the extension (".nii.gz").
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    staging.stage(path, &format!("-{name}"), write)?;
    staging.commit()
}

/// Fails when `path` cannot become an output file (its folder is missing, or it is a folder), so a
/// command can refuse before minutes of work rather than after.
pub fn check_output_file(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if path.file_name().is_none() || path.is_dir() {
        bail!("{}: not a file path (it is a folder)", path.display());
    }
    if !dir.is_dir() {
        bail!("{}: cannot write there: the folder {} does not exist", path.display(), dir.display());
    }
    Ok(())
}

/// Writes a whole output file atomically (text or bytes).
pub fn write_text(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    let mut staging = Staging::new();
    stage_text(&mut staging, path, contents)?;
    staging.commit()
}

/// Stages a text or byte file (see [`Staging`]).
pub fn stage_text(staging: &mut Staging, path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    staging.stage(path, ".tmp", |tmp| {
        std::fs::write(tmp, contents).with_context(|| format!("{}: cannot write", path.display()))
    })
}
