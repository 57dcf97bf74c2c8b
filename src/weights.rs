//! Reading model weights from safetensors files and PyTorch checkpoints (`torch.save`'s .pt/.pth, read
//! by `pytorch-reader`, which parses the pickle without executing anything), and checking them against
//! what a model expects.
//!
//! Every problem with a weights file is collected and reported together (missing, wrong shape,
//! unexpected, non-finite), each with its tensor name, so a user exporting their own MONAI model sees the
//! whole mismatch at once instead of fixing it one name at a time.

use crate::rng::Philox;
use crate::tensor::Tensor;
use anyhow::{bail, Context, Result};
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Refuse weight files above this size before reading them (the bundled models are a few MB).
pub const MAX_WEIGHTS_BYTES: u64 = 4 << 30;

/// Reads `dir/config.json` and opens `dir/model.safetensors`: the layout of every model folder.
/// `parse` turns the JSON text into the model's config; errors name the file and the model `kind`.
pub fn open_model_dir<C>(dir: &Path, kind: &str, parse: impl FnOnce(&str) -> Result<C>) -> Result<(C, WeightsFile)> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path)
        .with_context(|| format!("{}: cannot read {kind} config", config_path.display()))?;
    let config = parse(&text).with_context(|| format!("{}: bad {kind} config", config_path.display()))?;
    Ok((config, WeightsFile::open(&model_file(dir))?))
}

/// The weights file of a model folder: model.safetensors, else model.pt or model.pth (a MONAI bundle's
/// state dict, an nnU-Net checkpoint); model.safetensors is named when none exists.
pub fn model_file(dir: &Path) -> PathBuf {
    ["model.safetensors", "model.pt", "model.pth"]
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
        .unwrap_or_else(|| dir.join("model.safetensors"))
}

/// Top-level entries that hold the state dict in the checkpoints people have: nnU-Net v2's
/// `checkpoint_final.pth` and the common training-loop layouts.
const STATE_DICT_KEYS: [&str; 3] = ["network_weights", "state_dict", "model_state_dict"];

/// One tensor as stored: name, dtype and shape, for `xaiclip info`.
#[derive(Clone, Debug)]
pub struct StoredTensor {
    /// Tensor name.
    pub name: String,
    /// Stored dtype.
    pub dtype: String,
    /// Shape.
    pub shape: Vec<usize>,
}

/// A weights file, tensors converted to f32 on request.
pub struct WeightsFile {
    path: PathBuf,
    stored: Stored,
}

enum Stored {
    /// The whole safetensors file.
    Safetensors(Vec<u8>),
    /// A checkpoint's tensors, read from the file when asked for.
    Torch(std::collections::HashMap<String, pytorch_reader::Tensor>),
}

impl WeightsFile {
    /// Reads and validates a safetensors file (refusing files over the size limit), naming the file on failure.
    pub fn open(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).with_context(|| format!("{}: cannot open", path.display()))?;
        if meta.len() > MAX_WEIGHTS_BYTES {
            bail!(
                "{}: {} bytes is larger than the {} byte limit for a weights file",
                path.display(),
                meta.len(),
                MAX_WEIGHTS_BYTES
            );
        }
        let torch = path.extension().and_then(|e| e.to_str()).is_some_and(|e| matches!(e, "pt" | "pth"));
        if torch {
            return Ok(Self { path: path.to_path_buf(), stored: Stored::Torch(read_checkpoint(path)?) });
        }
        let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
        SafeTensors::deserialize(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: not a valid safetensors file ({e})", path.display()))?;
        Ok(Self { path: path.to_path_buf(), stored: Stored::Safetensors(bytes) })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every tensor's name, dtype and shape.
    pub fn tensors(&self) -> Vec<StoredTensor> {
        let mut list: Vec<StoredTensor> = match &self.stored {
            Stored::Safetensors(bytes) => SafeTensors::deserialize(bytes)
                .expect("validated in open")
                .tensors()
                .into_iter()
                .map(|(name, t)| StoredTensor { name, dtype: format!("{:?}", t.dtype()), shape: t.shape().to_vec() })
                .collect(),
            Stored::Torch(tensors) => tensors
                .iter()
                .map(|(name, t)| StoredTensor {
                    name: name.clone(),
                    dtype: format!("{:?}", t.dtype()),
                    shape: t.shape().to_vec(),
                })
                .collect(),
        };
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    /// The tensor converted to f32; errors for unknown names, non-float dtypes and NaN/Inf values.
    pub fn get(&self, name: &str) -> Result<Tensor> {
        let missing = || anyhow::anyhow!("{}: no tensor named {name}", self.path.display());
        let wrong_dtype = |dtype: String| {
            anyhow::anyhow!(
                "{}: tensor {name} has dtype {dtype}; weights must be F32, F16 or BF16",
                self.path.display()
            )
        };
        let (values, shape): (Vec<f32>, Vec<usize>) = match &self.stored {
            Stored::Safetensors(bytes) => {
                let view = SafeTensors::deserialize(bytes).expect("validated in open");
                let t = view.tensor(name).map_err(|_| missing())?;
                let kind = match t.dtype() {
                    Dtype::F32 => Float::F32,
                    Dtype::F16 => Float::F16,
                    Dtype::BF16 => Float::Bf16,
                    other => return Err(wrong_dtype(format!("{other:?}"))),
                };
                (kind.decode(t.data()), t.shape().to_vec())
            }
            Stored::Torch(tensors) => {
                use pytorch_reader::DType;
                let t = tensors.get(name).ok_or_else(missing)?;
                let kind = match t.dtype() {
                    DType::F32 => Float::F32,
                    DType::F16 => Float::F16,
                    DType::BF16 => Float::Bf16,
                    DType::F64 => Float::F64,
                    other => return Err(wrong_dtype(format!("{other:?}"))),
                };
                let raw = t.read().map_err(|e| anyhow::anyhow!("{}: {e}", self.path.display()))?;
                (kind.decode(&raw), t.shape().to_vec())
            }
        };
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            bail!("{}: tensor {name} holds a non-finite value ({}) at flat index {i}", self.path.display(), values[i]);
        }
        Tensor::new(&shape, values)
    }
}

/// Stored float formats, decoded to f32 (little-endian, as both formats store them on x86-64).
#[derive(Clone, Copy)]
enum Float {
    F32,
    F16,
    Bf16,
    F64,
}

impl Float {
    fn decode(self, raw: &[u8]) -> Vec<f32> {
        match self {
            Float::F32 => raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Float::F16 => raw.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Float::Bf16 => raw.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Float::F64 => raw
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
                .collect(),
        }
    }
}

/// The state dict of a torch checkpoint: the tensors under the first of [`STATE_DICT_KEYS`] the file has
/// at its top level, else every tensor it holds (a bare `torch.save(model.state_dict())`).
fn read_checkpoint(path: &Path) -> Result<std::collections::HashMap<String, pytorch_reader::Tensor>> {
    use pytorch_reader::PytorchReader;
    let bad = |e: pytorch_reader::PytorchError| {
        anyhow::anyhow!("{}: not a readable PyTorch checkpoint ({e})", path.display())
    };
    let all = PytorchReader::new(path).map_err(bad)?;
    let nested = STATE_DICT_KEYS.iter().find(|k| all.keys().iter().any(|n| n.starts_with(&format!("{k}."))));
    let tensors = match nested {
        Some(key) => PytorchReader::with_top_level_key(path, key).map_err(bad)?.into_tensors(),
        None => all.into_tensors(),
    };
    if tensors.is_empty() {
        bail!("{}: the checkpoint holds no tensors", path.display());
    }
    Ok(tensors)
}

enum Source<'a> {
    File {
        file: &'a WeightsFile,
        stored: BTreeMap<String, Vec<usize>>,
    },
    /// Seeded random values of whatever shape is asked for: models of any size without a file, for
    /// benches and shape tests.
    Random {
        rng: Philox,
        drawn: u64,
    },
}

/// Takes the tensors a model asks for, remembering every problem until `finish`.
pub struct ParamReader<'a> {
    source: Source<'a>,
    taken: Vec<String>,
    problems: Vec<String>,
}

impl<'a> ParamReader<'a> {
    /// A reader of `file`'s tensors by name, recording what was used.
    pub fn new(file: &'a WeightsFile) -> Self {
        let stored = file.tensors().into_iter().map(|t| (t.name, t.shape)).collect();
        Self { source: Source::File { file, stored }, taken: Vec::new(), problems: Vec::new() }
    }

    /// Random initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights, near 1 for 1-D scales and
    /// variances (so norms stay well defined).
    pub fn random(seed: u64) -> Self {
        Self { source: Source::Random { rng: Philox::new(seed), drawn: 0 }, taken: Vec::new(), problems: Vec::new() }
    }

    /// The tensor `name` with exactly `shape`; on any problem records it and returns a zero placeholder
    /// so loading can go on and report everything at once.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Tensor {
        self.taken.push(name.to_string());
        match &mut self.source {
            Source::Random { rng, drawn } => {
                let n: usize = shape.iter().product();
                let near_one = shape.len() == 1 && (name.ends_with("weight") || name.ends_with("running_var"));
                let bound = 1.0 / (shape.iter().skip(1).product::<usize>().max(1) as f32).sqrt();
                let values = (0..n as u64)
                    .map(|i| {
                        let u = rng.uniform(*drawn + i) * 2.0 - 1.0;
                        if near_one {
                            1.0 + 0.1 * u
                        } else {
                            u * bound
                        }
                    })
                    .collect();
                *drawn += n as u64;
                return Tensor::new(shape, values).expect("length matches shape");
            }
            Source::File { file, stored } => match stored.get(name) {
                None => self.problems.push(format!("missing {name} (expected shape {shape:?})")),
                Some(s) if s != shape => self.problems.push(format!("{name} has shape {s:?}, expected {shape:?}")),
                Some(_) => match file.get(name) {
                    Ok(t) => return t,
                    Err(e) => self.problems.push(format!("{e:#}")),
                },
            },
        }
        Tensor::zeros(shape)
    }

    /// Fails with every recorded problem plus the stored tensors nobody asked for. Names in
    /// `ignored_suffixes` (PyTorch bookkeeping such as `num_batches_tracked`) may be left over.
    pub fn finish(self, ignored_suffixes: &[&str]) -> Result<()> {
        self.finish_except(|name| ignored_suffixes.iter().any(|s| name.ends_with(s)))
    }

    /// As `finish`, with the stored tensors that may be left over chosen by `unused` (aliases and
    /// training-only heads of a checkpoint).
    pub fn finish_except(self, unused: impl Fn(&str) -> bool) -> Result<()> {
        let Source::File { file, stored } = self.source else { return Ok(()) };
        let mut problems = self.problems;
        for (name, shape) in &stored {
            if !self.taken.contains(name) && !unused(name) {
                problems.push(format!("unexpected tensor {name} (shape {shape:?})"));
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        bail!(
            "{}: weights do not match the model config ({} problems):\n  {}",
            file.path.display(),
            problems.len(),
            problems.join("\n  ")
        )
    }
}
