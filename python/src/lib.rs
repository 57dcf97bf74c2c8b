//! The native half of the `xaiclip` Python package: numpy arrays in and out of the engine's facade
//! (`xaiclip::Explainer`), the GIL released while it works, Ctrl-C checked between batches, and the
//! engine's error kinds as Python exceptions. The pure-Python `xaiclip/` package around it adds paths,
//! progress bars and pandas; every option and default is the engine's own.

use numpy::ndarray::{Array2, Array3, ShapeBuilder};
use numpy::{IntoPyArray, PyArray2, PyArray3, PyReadonlyArray2, PyReadonlyArrayDyn};
use pyo3::exceptions::{
    PyFileNotFoundError, PyKeyboardInterrupt, PyMemoryError, PyRuntimeError, PyTypeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyType};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use xaiclip::dataset::LabelIds;
use xaiclip::explainer::Options;
use xaiclip::io::Volume;
use xaiclip::pipeline::BatchSize;
use xaiclip::preprocess::Intensity;
use xaiclip::roi::clip::{ClipOptions, Prompts};
use xaiclip::{Device, ErrorKind, Method, Precision, Request, RoiMode, Slices};

/// The engine's kernels want cache-line-aligned activations (see `CacheAligned`).
#[global_allocator]
static ALLOC: xaiclip::backend::cpu::CacheAligned = xaiclip::backend::cpu::CacheAligned;

/// The engine's error as the Python exception of its kind, with the same message the CLI prints. The
/// package's own exceptions are defined in `xaiclip/errors.py` (each also a ValueError or RuntimeError).
fn py_err(e: xaiclip::Error) -> PyErr {
    let msg = e.to_string();
    let own = |name: &str| {
        Python::attach(|py| {
            match py.import("xaiclip.errors").and_then(|m| m.getattr(name)).and_then(|c| Ok(c.cast_into::<PyType>()?)) {
                Ok(class) => PyErr::from_type(class, msg.clone()),
                Err(e) => e,
            }
        })
    };
    match e.kind() {
        ErrorKind::InvalidInput if e.path().is_some_and(|p| !p.exists()) => PyFileNotFoundError::new_err(msg),
        ErrorKind::InvalidInput => PyValueError::new_err(msg),
        ErrorKind::Unsupported => own("UnsupportedError"),
        ErrorKind::OrganAbsent => own("OrganAbsentError"),
        ErrorKind::RoiMiss => own("RoiMissError"),
        ErrorKind::DeviceUnavailable => own("DeviceUnavailableError"),
        ErrorKind::OutOfMemory => PyMemoryError::new_err(msg),
        ErrorKind::Cancelled => PyKeyboardInterrupt::new_err(msg),
        ErrorKind::Other => PyRuntimeError::new_err(msg),
    }
}

fn value_err(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// A value of one of the engine's option enums, by its command-line name.
fn parse_enum<T: clap::ValueEnum>(what: &str, value: &str) -> PyResult<T> {
    T::from_str(value, false).map_err(|_| {
        let names: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value())
            .map(|p| p.get_name().to_string())
            .collect();
        PyValueError::new_err(format!("{what}={value:?}: expected one of {}", names.join(", ")))
    })
}

/// A numpy image (2-D: one slice, 3-D: a volume, indexed [i, j, k] as nibabel's `get_fdata()`) as a
/// volume, read in index order whatever its memory order or strides.
fn volume_from_array(
    array: &Bound<'_, PyAny>,
    affine: Option<PyReadonlyArray2<'_, f64>>,
    what: &str,
) -> PyResult<Volume> {
    macro_rules! read {
        ($($t:ty),*) => {
            $(if let Ok(a) = array.extract::<PyReadonlyArrayDyn<'_, $t>>() {
                let view = a.as_array();
                // The reversed axes iterate with i fastest: the engine's x-fastest order.
                let data: Vec<f32> = view.t().iter().map(|&v| v as f32).collect();
                return finish(view.shape().to_vec(), data, affine, what);
            })*
        };
    }
    read!(f32, f64, i16, u8, u16, i32);
    let dtype = array.getattr("dtype").map(|d| d.to_string()).unwrap_or_else(|_| "unknown".into());
    Err(PyTypeError::new_err(format!(
        "{what}: expected a numpy array of float32, float64, int16, uint8, uint16 or int32, got dtype {dtype}"
    )))
}

fn finish(
    shape: Vec<usize>,
    data: Vec<f32>,
    affine: Option<PyReadonlyArray2<'_, f64>>,
    what: &str,
) -> PyResult<Volume> {
    let dims = match shape[..] {
        [nx, ny] => [nx, ny, 1],
        [nx, ny, nz] => [nx, ny, nz],
        _ => {
            return Err(value_err(format!(
                "{what}: expected a 2-D slice or a 3-D volume, got shape {shape:?} ({} dimensions)",
                shape.len()
            )))
        }
    };
    if dims.contains(&0) {
        return Err(value_err(format!("{what}: empty array of shape {shape:?}")));
    }
    let affine = match affine {
        None => [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]],
        Some(a) => {
            let a = a.as_array();
            if a.shape() != [4, 4] {
                return Err(value_err(format!("affine: expected a 4x4 matrix, got shape {:?}", a.shape())));
            }
            let m: [[f64; 4]; 4] = std::array::from_fn(|r| std::array::from_fn(|c| a[[r, c]]));
            let det3 = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
                - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
                + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
            if !m.iter().flatten().all(|v| v.is_finite()) || det3 == 0.0 {
                return Err(value_err("affine: expected finite values and an invertible 3x3 part"));
            }
            m
        }
    };
    let volume = Volume {
        dims,
        data,
        affine,
        source: PathBuf::from(format!("<{what} array>")),
        nifti_header: None,
        modality: None,
    };
    volume.check_finite().map_err(|e| value_err(format!("{e:#}")))?;
    Ok(volume)
}

/// An image argument: a path (read as `xaiclip read_image` does) or a numpy array.
fn image_arg(image: &Bound<'_, PyAny>, affine: Option<PyReadonlyArray2<'_, f64>>, what: &str) -> PyResult<Volume> {
    if let Ok(path) = image.extract::<PathBuf>() {
        if affine.is_some() {
            return Err(value_err(format!("affine: only for numpy arrays; {what} is a file with its own")));
        }
        return xaiclip::read_volume(&path).map_err(py_err);
    }
    volume_from_array(image, affine, what)
}

/// The volume as a numpy array indexed [i, j, k] (Fortran order, no copy of the wrong orientation).
fn volume_array<'py>(py: Python<'py>, dims: [usize; 3], data: Vec<f32>) -> Bound<'py, PyArray3<f32>> {
    Array3::from_shape_vec((dims[0], dims[1], dims[2]).f(), data).expect("dims match the data").into_pyarray(py)
}

fn affine_array<'py>(py: Python<'py>, affine: &[[f64; 4]; 4]) -> Bound<'py, PyArray2<f64>> {
    Array2::from_shape_fn((4, 4), |(r, c)| affine[r][c]).into_pyarray(py)
}

fn plane<'py, T: numpy::Element + Copy>(py: Python<'py>, size: usize, values: &[T]) -> Bound<'py, PyArray2<T>> {
    Array2::from_shape_vec((size, size), values.to_vec()).expect("size x size").into_pyarray(py)
}

/// The bundled models, inside the module so that an installed package needs no source tree.
const BUNDLED: &[(&str, &[u8])] = &[
    ("unet/config.json", include_bytes!("../../weights/unet/config.json")),
    ("unet/model.safetensors", include_bytes!("../../weights/unet/model.safetensors")),
    ("clip/config.json", include_bytes!("../../weights/clip/config.json")),
    ("clip/model.safetensors", include_bytes!("../../weights/clip/model.safetensors")),
    ("coop/config.json", include_bytes!("../../weights/coop/config.json")),
    ("coop/model.safetensors", include_bytes!("../../weights/coop/model.safetensors")),
];

/// Writes the bundled models once into a cache folder named by their content (XDG_CACHE_HOME or
/// ~/.cache, else the temporary folder), each file atomically, and points the engine at it.
fn install_bundled() -> std::io::Result<()> {
    // FNV-1a over every byte: a different build with other weights gets another folder.
    let hash = BUNDLED
        .iter()
        .flat_map(|(n, b)| n.as_bytes().iter().chain(b.iter()))
        .fold(0xcbf29ce484222325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100000001b3));
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    let root = base.join("xaiclip").join(format!("weights-{hash:016x}"));
    for (name, bytes) in BUNDLED {
        let path = root.join(name);
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == bytes.len() as u64) {
            continue;
        }
        let dir = path.parent().expect("a folder");
        std::fs::create_dir_all(dir)?;
        let tmp = tempfile::NamedTempFile::new_in(dir)?;
        std::fs::write(tmp.path(), bytes)?;
        tmp.persist(&path).map_err(|e| e.error)?;
    }
    xaiclip::models::set_bundled_root(root);
    Ok(())
}

/// A volume and its affine, as numpy arrays.
type VolumeArrays<'py> = (Bound<'py, PyArray3<f32>>, Bound<'py, PyArray2<f64>>);

/// Reads a NIfTI file or DICOM series folder: `(array float32 indexed [i, j, k], affine 4x4)`.
#[pyfunction]
fn read_image<'py>(py: Python<'py>, path: PathBuf) -> PyResult<VolumeArrays<'py>> {
    let v = py.detach(|| xaiclip::read_volume(&path)).map_err(py_err)?;
    let affine = affine_array(py, &v.affine);
    Ok((volume_array(py, v.dims, v.data), affine))
}

/// The synthetic abdominal CT of the demo (`xaiclip demo`, `bench --demo`: seed 7, 256², 32 slices), or
/// with `mr` (t1-in-phase, t1-opposed-phase, t2-spir) the MR of the same anatomy:
/// `(image as float32, FLARE22 labels uint8, affine)`, indexed [i, j, k].
#[pyfunction]
#[pyo3(signature = (seed=7, size=256, slices=32, mr=None))]
#[allow(clippy::type_complexity)]
fn phantom<'py>(
    py: Python<'py>,
    seed: u64,
    size: usize,
    slices: usize,
    mr: Option<&str>,
) -> PyResult<(Bound<'py, PyArray3<f32>>, Bound<'py, PyArray3<u8>>, Bound<'py, PyArray2<f64>>)> {
    if !(16..=1024).contains(&size) || !(1..=512).contains(&slices) {
        return Err(value_err(format!("phantom: size {size} must be 16-1024 and slices {slices} 1-512")));
    }
    let sequence = mr
        .map(|m| {
            <xaiclip::phantom::Sequence as clap::ValueEnum>::from_str(m, false).map_err(|_| {
                value_err(format!("mr={m:?}: expected \"t1-in-phase\", \"t1-opposed-phase\" or \"t2-spir\""))
            })
        })
        .transpose()?;
    let p = py.detach(|| match sequence {
        Some(q) => xaiclip::phantom::generate_mr(seed, size, slices, q),
        None => xaiclip::phantom::generate(seed, size, slices),
    });
    let dims = p.image.dims;
    let labels = Array3::from_shape_vec((dims[0], dims[1], dims[2]).f(), p.labels).expect("dims").into_pyarray(py);
    let affine = affine_array(py, &p.image.affine);
    Ok((volume_array(py, dims, p.image.data), labels, affine))
}

/// Runs `work` without the GIL; `progress(done, total)` (a Python callable or None) is called after
/// each batch with the GIL, and Ctrl-C (or an exception the callable raises) cancels the run there.
fn detached<T: Send>(
    py: Python<'_>,
    explainer: &xaiclip::Explainer,
    progress: Option<Py<PyAny>>,
    work: impl FnOnce(&mut (dyn FnMut(usize, usize) + Send)) -> xaiclip::Result<T> + Send,
) -> PyResult<T> {
    let cancel = explainer.cancel_token();
    cancel.reset();
    let raised: Mutex<Option<PyErr>> = Mutex::new(None);
    let mut report = |done: usize, total: usize| {
        Python::attach(|py| {
            let outcome = py.check_signals().and_then(|()| match &progress {
                Some(cb) => cb.call1(py, (done, total)).map(|_| ()),
                None => Ok(()),
            });
            if let Err(e) = outcome {
                raised.lock().expect("not poisoned").get_or_insert(e);
                cancel.cancel();
            }
        })
    };
    let result = py.detach(|| work(&mut report));
    if let Some(e) = raised.lock().expect("not poisoned").take() {
        return Err(e);
    }
    result.map_err(py_err)
}

/// The engine: a U-Net (and CLIP, loaded on first use) on one device.
#[pyclass(module = "xaiclip._native", frozen)]
struct Explainer {
    inner: xaiclip::Explainer,
}

#[pymethods]
impl Explainer {
    #[new]
    #[pyo3(signature = (model=None, clip=None, coop=None, *, device="auto", precision="f32", batch="auto",
        size=None, modality=None, window=None, prompt=None, no_coop=false, roi_threshold="otsu", mirror=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        model: Option<PathBuf>,
        clip: Option<PathBuf>,
        coop: Option<PathBuf>,
        device: &str,
        precision: &str,
        batch: &str,
        size: Option<usize>,
        modality: Option<&str>,
        window: Option<&str>,
        prompt: Option<String>,
        no_coop: bool,
        roi_threshold: &str,
        mirror: bool,
    ) -> PyResult<Self> {
        let device: Device = device.parse().map_err(|e| value_err(format!("device={device:?}: {e:#}")))?;
        let precision: Precision = parse_enum("precision", precision)?;
        let batch: BatchSize = batch.parse().map_err(|e| value_err(format!("batch={batch:?}: {e:#}")))?;
        // Neither given: the model's own normalisation (an nnU-Net's), else the abdomen window.
        let intensity = match (modality, window) {
            (Some("mr"), None) => Some(Intensity::MrPercentile),
            (Some("mr"), Some(_)) => return Err(value_err("window: only for modality=\"ct\"")),
            (Some("ct"), None) => Some(Intensity::ABDOMEN),
            (Some("ct") | None, Some(w)) => Some(w.parse().map_err(|e| value_err(format!("window={w:?}: {e:#}")))?),
            (None, None) => None,
            (Some(m), _) => return Err(value_err(format!("modality={m:?}: expected \"ct\" or \"mr\""))),
        };
        let prompts = match (prompt, no_coop) {
            (Some(p), _) => Prompts::Custom(p),
            (None, true) => Prompts::Template,
            (None, false) => Prompts::Coop,
        };
        let threshold =
            roi_threshold.parse().map_err(|e| value_err(format!("roi_threshold={roi_threshold:?}: {e:#}")))?;
        let mut builder = xaiclip::Explainer::builder()
            .device(device)
            .precision(precision)
            .batch(batch)
            .size(size)
            .mirror(mirror)
            .clip(ClipOptions { clip, coop, prompts, threshold });
        if let Some(intensity) = intensity {
            builder = builder.intensity(intensity);
        }
        if let Some(m) = model {
            builder = builder.unet(m);
        }
        static INSTALLED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
        INSTALLED.get_or_init(|| install_bundled().map_err(|e| e.to_string())).clone().map_err(|e| {
            PyRuntimeError::new_err(format!("cannot write the bundled models to the cache folder: {e}"))
        })?;
        let inner = py.detach(|| builder.build()).map_err(py_err)?;
        Ok(Self { inner })
    }

    /// The device in words.
    #[getter]
    fn device(&self) -> String {
        self.inner.device_name()
    }

    /// Side of the square model grid.
    #[getter]
    fn model_size(&self) -> usize {
        self.inner.model_size()
    }

    /// Explains one slice; see the Python wrapper's docstring.
    #[pyo3(signature = (image, organ, method, roi, label, affine, slice, label_ids, options, progress))]
    #[allow(clippy::too_many_arguments)]
    fn explain(
        &self,
        py: Python<'_>,
        image: &Bound<'_, PyAny>,
        organ: &str,
        method: &str,
        roi: Option<&str>,
        label: Option<&Bound<'_, PyAny>>,
        affine: Option<PyReadonlyArray2<'_, f64>>,
        slice: Option<&Bound<'_, PyAny>>,
        label_ids: &str,
        options: &Bound<'_, PyDict>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Explanation> {
        let method: Method = parse_enum("method", method)?;
        let case = self.case(py, image, affine, roi, label, label_ids, slice, options)?;
        let mut request = Request::new(organ, method).roi(case.roi).settings(case.settings).slices(case.slices);
        if let Some(labels) = case.labels {
            request = request.labels(labels);
        }
        let volume = Arc::new(case.volume);
        let inner = &self.inner;
        let v = volume.clone();
        let explanation = detached(py, inner, progress, move |report| inner.explain_with(&v, &request, report))?;
        Ok(Explanation { inner: explanation, volume })
    }

    /// Each method in full-image and `roi` mode; rows as report.json's `result` blocks.
    #[pyo3(signature = (image, organ, methods, roi, label, affine, slice, label_ids, repeat, warmup, options, progress))]
    #[allow(clippy::too_many_arguments)]
    fn bench(
        &self,
        py: Python<'_>,
        image: &Bound<'_, PyAny>,
        organ: &str,
        methods: Vec<String>,
        roi: Option<&str>,
        label: Option<&Bound<'_, PyAny>>,
        affine: Option<PyReadonlyArray2<'_, f64>>,
        slice: Option<&Bound<'_, PyAny>>,
        label_ids: &str,
        repeat: usize,
        warmup: usize,
        options: &Bound<'_, PyDict>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<String> {
        let methods = methods.iter().map(|m| parse_enum::<Method>("methods", m)).collect::<PyResult<Vec<_>>>()?;
        let Case { volume, roi, settings, slices, labels } =
            self.case(py, image, affine, roi, label, label_ids, slice, options)?;
        let class = self.inner.class_of(organ).map_err(py_err)?;
        let inner = &self.inner;
        let rows = detached(py, inner, progress, move |report| {
            let k = inner.pick_slice(&volume, labels.as_deref(), &slices, class)?;
            let input = inner.prepare(&volume, labels.as_deref(), k, class, inner.intensity())?;
            let clip = if roi.uses_clip() {
                inner.clip_roi(&input, class, inner.intensity().modality())?
            } else {
                Default::default()
            };
            let rows = inner.bench(
                &input,
                &clip,
                class,
                &methods,
                roi,
                &settings,
                xaiclip::Runs { warmup, repeat },
                |_, _, d, t| report(d, t),
                |_| {},
            )?;
            Ok((k, rows))
        })?;
        let (k, rows) = rows;
        let rows: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                let mut row = r.result_json();
                row["slice"] = k.into();
                row
            })
            .collect();
        Ok(serde_json::to_string(&rows).expect("rows serialise"))
    }
}

/// The arguments `explain` and `bench` share, converted.
struct Case {
    volume: Volume,
    roi: RoiMode,
    settings: xaiclip::Settings,
    slices: Slices,
    labels: Option<Vec<u8>>,
}

impl Explainer {
    /// Reads the image (and labels) and converts the ROI mode, slice and options.
    #[allow(clippy::too_many_arguments)]
    fn case(
        &self,
        py: Python<'_>,
        image: &Bound<'_, PyAny>,
        affine: Option<PyReadonlyArray2<'_, f64>>,
        roi: Option<&str>,
        label: Option<&Bound<'_, PyAny>>,
        label_ids: &str,
        slice: Option<&Bound<'_, PyAny>>,
        options: &Bound<'_, PyDict>,
    ) -> PyResult<Case> {
        let volume = image_arg(image, affine, "image")?;
        let roi = roi.map(|r| parse_enum::<RoiMode>("roi", r)).transpose()?.unwrap_or_default();
        let settings = self.settings(options)?;
        let slices = slices_arg(slice, &volume)?;
        let labels = label.map(|l| self.labels(py, l, label_ids, &volume)).transpose()?;
        Ok(Case { volume, roi, settings, slices, labels })
    }

    /// The explainer settings of `options` (the CLI's option names) on this model's grid.
    fn settings(&self, options: &Bound<'_, PyDict>) -> PyResult<xaiclip::Settings> {
        let mut pairs = Vec::new();
        for (k, v) in options.iter() {
            let key: String = k.extract()?;
            if v.is_none() {
                continue;
            }
            let value = if let Ok(b) = v.cast::<pyo3::types::PyBool>() {
                b.is_true().to_string()
            } else if v.is_instance_of::<pyo3::types::PyInt>() || v.is_instance_of::<pyo3::types::PyFloat>() {
                v.str()?.to_string()
            } else if let Ok(s) = v.extract::<String>() {
                s
            } else {
                return Err(PyTypeError::new_err(format!(
                    "{key}: expected a number, a string or a bool, got {}",
                    v.get_type().name()?
                )));
            };
            pairs.push((key, value));
        }
        let options = Options::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.clone()))).map_err(py_err)?;
        Ok(options.settings(self.inner.model_size()))
    }

    fn labels(&self, py: Python<'_>, label: &Bound<'_, PyAny>, ids: &str, image: &Volume) -> PyResult<Vec<u8>> {
        let ids: LabelIds = parse_enum("label_ids", ids)?;
        if let Ok(path) = label.extract::<PathBuf>() {
            return py.detach(|| self.inner.read_labels(&path, ids, image)).map_err(py_err);
        }
        let mut labels = volume_from_array(label, None, "label")?;
        if labels.dims != image.dims {
            return Err(value_err(format!(
                "label: shape {:?} differs from the image's {:?}",
                &labels.dims[..],
                &image.dims[..]
            )));
        }
        labels.affine = image.affine;
        self.inner.labels_from_volume(&labels, ids, image).map_err(py_err)
    }
}

/// `slice=`: an index, "organ-center", or None (the only slice of a 2-D image, else organ-center).
fn slices_arg(slice: Option<&Bound<'_, PyAny>>, volume: &Volume) -> PyResult<Slices> {
    match slice {
        None if volume.dims[2] == 1 => Ok(Slices::List(vec![0])),
        None => Ok(Slices::OrganCenter),
        Some(s) => {
            if let Ok(k) = s.extract::<usize>() {
                return Ok(Slices::List(vec![k]));
            }
            let text: String = s.extract().map_err(|_| PyTypeError::new_err("slice: expected an int or a string"))?;
            text.parse().map_err(|e| value_err(format!("slice={text:?}: {e}")))
        }
    }
}

/// One explanation: maps as numpy arrays, figures, and the files `xaiclip explain` writes.
#[pyclass(module = "xaiclip._native", frozen)]
struct Explanation {
    inner: xaiclip::Explanation,
    volume: Arc<Volume>,
}

#[pymethods]
impl Explanation {
    /// The saliency on the image's grid, indexed [i, j, k]: the map on its slice, zero elsewhere
    /// (the data of `xaiclip explain`'s saliency.nii.gz).
    #[getter]
    fn saliency_volume<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray3<f32>>> {
        let data = self.inner.saliency_volume(&self.volume).map_err(py_err)?;
        Ok(volume_array(py, self.volume.dims, data))
    }

    /// The saliency on the model grid, [row, column] as the engine computes it.
    #[getter]
    fn saliency_model<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray2<f32>> {
        plane(py, self.inner.input.size, &self.inner.run.saliency)
    }

    /// Pixels that could be perturbed (model grid).
    #[getter]
    fn roi<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray2<bool>> {
        plane(py, self.inner.input.size, &self.inner.run.roi)
    }

    /// M0: the U-Net's unperturbed prediction of the organ (model grid).
    #[getter]
    fn m0<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray2<bool>> {
        plane(py, self.inner.input.size, &self.inner.run.m0)
    }

    /// The organ's ground truth (model grid), or None without labels.
    #[getter]
    fn truth<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyArray2<bool>>> {
        self.inner.input.truth.as_ref().map(|t| plane(py, self.inner.input.size, t))
    }

    /// CLIP's organ probability map (model grid), or None outside the CLIP ROI modes.
    #[getter]
    fn roi_probability<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyArray2<f32>>> {
        self.inner.clip_probability.as_ref().map(|p| plane(py, self.inner.input.size, p))
    }

    /// The windowed slice on the model grid, as explained.
    #[getter]
    fn model_input<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray2<f32>> {
        plane(py, self.inner.input.size, &self.inner.input.image)
    }

    /// report.json's `result` block, as JSON text (the wrapper's `.metrics` parses it).
    #[getter]
    fn result_json(&self) -> String {
        self.inner.result_json().to_string()
    }

    /// The slice explained.
    #[getter]
    fn slice(&self) -> usize {
        self.inner.slice
    }

    /// The voxel axis the slices are stacked along (closest to superior-inferior; 2 for most CT).
    #[getter]
    fn slice_axis(&self) -> PyResult<usize> {
        Ok(xaiclip::preprocess::AxialLayout::of(&self.volume).map_err(|e| py_err(e.into()))?.slice_axis)
    }

    /// What looked wrong about the image for the model (e.g. values that cannot be CT under a CT window).
    #[getter]
    fn warnings(&self) -> Vec<String> {
        self.inner.warnings.clone()
    }

    /// The organ's name.
    #[getter]
    fn organ(&self) -> String {
        self.inner.organ.clone()
    }

    /// The method's name.
    #[getter]
    fn method(&self) -> &'static str {
        self.inner.run.method.name()
    }

    /// The ROI mode's name.
    #[getter]
    fn roi_mode(&self) -> &'static str {
        self.inner.run.roi_mode.name()
    }

    /// U-Net forward passes.
    #[getter]
    fn forward_passes(&self) -> usize {
        self.inner.run.forward_passes
    }

    /// Seconds of the explanation (CLIP ROI included, metrics not).
    #[getter]
    fn seconds(&self) -> f64 {
        self.inner.run.seconds
    }

    /// The settings it ran with, as JSON text (report.json's `settings`; the wrapper parses it).
    #[getter]
    fn settings_json(&self) -> String {
        self.inner.settings.json_for(self.inner.run.method).to_string()
    }

    /// Writes the saliency volume as NIfTI (the image's header and affine), atomically.
    fn to_nifti(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.detach(|| {
            let data = self.inner.saliency_volume(&self.volume)?;
            Ok(xaiclip::io::nifti::write_like(&path, &self.volume, &data)?)
        })
        .map_err(py_err)
    }

    /// Writes the overlay PNG of `xaiclip explain` (heat map, ROI outline cyan, ground truth green).
    fn overlay(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.detach(|| Ok(xaiclip::render::save_png(&path, &self.inner.overlay()?)?)).map_err(py_err)
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(read_image, m)?)?;
    m.add_function(wrap_pyfunction!(phantom, m)?)?;
    m.add_class::<Explainer>()?;
    m.add_class::<Explanation>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
