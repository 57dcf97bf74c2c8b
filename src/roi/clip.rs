//! Language-guided localisation: CLIP patch features against organ prompts (CoOp context vectors or a
//! hand-written prompt), turned into a per-pixel probability map and then into an ROI mask.

use crate::backend::Backend;
use crate::error::Error;
use crate::models::bundled;
use crate::models::clip::{ClassPosition, ClipModel, ClipTokenizer, IMAGE_MEAN, IMAGE_STD};
use crate::organs::FLARE22_ORGANS;
use crate::preprocess::{resize_bilinear, Modality};
use crate::tensor::Tensor;
use crate::weights::WeightsFile;
use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The hand-written prompt of a class in `modality` ("a CT image of the {}", "an MR image of the {}"):
/// the prompts the bundled CLIP was trained with, and the CoOp-free fallback.
pub fn hand_template(modality: Modality) -> &'static str {
    match modality {
        Modality::Ct => "a CT image of the {}",
        Modality::Mr => "an MR image of the {}",
    }
}

/// CoOp's learned context vectors, one set per class (class-specific context), for one modality.
pub struct CoopContexts {
    /// Class names, in the order of the contexts.
    pub classes: Vec<String>,
    /// Where the class name sits in the prompt.
    pub position: ClassPosition,
    /// Learned context vectors per class.
    pub contexts: Vec<Tensor>,
}

impl CoopContexts {
    /// Loads `dir/config.json` (classes, position) and `dir/model.safetensors`: the contexts of
    /// `modality`, named "{modality}/{class}" when the config lists `modalities`; a folder without that
    /// list holds CT contexts named by class, as CoOp writes them.
    pub fn load_dir(dir: &Path, modality: Modality) -> Result<Self> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path)
            .with_context(|| format!("{}: cannot read CoOp config", config_path.display()))?;
        let v: Value =
            serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", config_path.display()))?;
        let classes: Vec<String> = v["classes"]
            .as_array()
            .map(|a| a.iter().filter_map(|c| c.as_str().map(String::from)).collect())
            .unwrap_or_default();
        ensure!(!classes.is_empty(), "{}: needs a non-empty \"classes\" list", config_path.display());
        let position = match v["class_position"].as_str().unwrap_or("end") {
            "end" => ClassPosition::End,
            "middle" => ClassPosition::Middle,
            "front" => ClassPosition::Front,
            other => bail!("{}: class_position {other:?} (use end, middle or front)", config_path.display()),
        };
        let prefix = match v.get("modalities").and_then(Value::as_object) {
            Some(m) if m.contains_key(modality.name()) => format!("{}/", modality.name()),
            Some(m) => bail!(
                "{}: CoOp contexts for {} only, not {}; use a CoOp folder trained on {} images, or --no-coop for the hand prompt",
                config_path.display(),
                m.keys().cloned().collect::<Vec<_>>().join(", "),
                modality.name(),
                modality.name()
            ),
            None if modality == Modality::Ct => String::new(),
            None => bail!(
                "{}: CoOp contexts without a \"modalities\" list are CT contexts; for MR use a CoOp folder trained on MR (the bundled one is), or --no-coop for the hand prompt",
                config_path.display()
            ),
        };
        let weights = WeightsFile::open(&dir.join("model.safetensors"))?;
        let contexts = classes.iter().map(|c| weights.get(&format!("{prefix}{c}"))).collect::<Result<Vec<_>>>()?;
        Ok(Self { classes, position, contexts })
    }
}

/// Normalised text features per class, ready for patch similarities.
pub struct ClipLocaliser<'a, B: Backend> {
    /// The CLIP model.
    pub model: &'a ClipModel<B>,
    /// Class names, background first.
    pub classes: Vec<String>,
    text: Vec<Vec<f32>>,
}

fn normalised(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter().map(|x| x / n).collect()
}

impl<'a, B: Backend> ClipLocaliser<'a, B> {
    /// Class text features from CoOp contexts; `prompt` replaces the target class's prompt by a
    /// hand-written one (then every class uses `template`, so the softmax compares like with like).
    pub fn new(
        backend: &B,
        model: &'a ClipModel<B>,
        classes: &[String],
        coop: Option<&CoopContexts>,
        prompt: Option<(usize, &str)>,
        template: &str,
    ) -> Result<Self> {
        let tok = ClipTokenizer::shared();
        let text: Vec<Vec<f32>> = match (coop, prompt) {
            (Some(coop), None) => {
                ensure!(coop.classes == classes, "CoOp classes {:?} do not match {:?}", coop.classes, classes);
                let dot = *tok.encode(".").first().context("tokenizer lost '.'")?;
                let prompts = classes
                    .iter()
                    .zip(&coop.contexts)
                    .map(|(name, ctx)| {
                        model.prompt_embeddings(ctx, &tok.encode(name), coop.position, (tok.start(), dot, tok.end()))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let t = model.encode_prompts(backend, &prompts)?;
                t.data().chunks(t.shape()[1]).map(<[f32]>::to_vec).collect()
            }
            (_, prompt) => {
                let ids: Vec<Vec<u32>> = classes
                    .iter()
                    .enumerate()
                    .map(|(c, name)| match prompt {
                        Some((target, text)) if target == c => tok.tokenize(text),
                        _ => tok.tokenize(&template.replace("{}", name)),
                    })
                    .collect();
                let t = model.encode_text_ids(backend, &ids)?;
                t.data().chunks(t.shape()[1]).map(<[f32]>::to_vec).collect()
            }
        };
        Ok(Self { model, classes: classes.to_vec(), text: text.iter().map(|t| normalised(t)).collect() })
    }

    /// Probability of class `target` per pixel of a size x size slice (values in [0, 1] windowed): the
    /// softmax over classes of logit_scale * cos(patch, class text), bilinearly upsampled.
    pub fn probability_map(&self, backend: &B, slice: &[f32], size: usize, target: usize) -> Result<Vec<f32>> {
        ensure!(target < self.classes.len(), "class {target} not among the CLIP classes");
        let s = self.model.config().image_size;
        let resized = resize_bilinear(slice, 1, (size, size), (s, s));
        let mut pixels = Vec::with_capacity(3 * s * s);
        for c in 0..3 {
            pixels.extend(resized.iter().map(|v| (v - IMAGE_MEAN[c]) / IMAGE_STD[c]));
        }
        let (dense, gh, gw) = self.model.dense_image_features(backend, &Tensor::new(&[1, 3, s, s], pixels)?)?;
        let p = dense.shape()[2];
        let scale = self.model.logit_scale.min(100.0);
        let mut grid = Vec::with_capacity(gh * gw);
        for patch in dense.data().chunks(p) {
            let f = normalised(patch);
            let logits: Vec<f32> =
                self.text.iter().map(|t| scale * t.iter().zip(&f).map(|(a, b)| a * b).sum::<f32>()).collect();
            let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let z: f32 = logits.iter().map(|l| (l - m).exp()).sum();
            grid.push((logits[target] - m).exp() / z);
        }
        Ok(resize_bilinear(&grid, 1, (gh, gw), (size, size)))
    }
}

/// How a probability map becomes a mask.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Threshold {
    /// Keep values at or above this.
    Fixed(f32),
    /// Otsu's threshold of the min-max normalised map.
    Otsu,
    /// Keep this fraction of the slice, most probable first.
    TopFraction(f32),
}

impl std::str::FromStr for Threshold {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || anyhow::anyhow!("threshold {s:?}: use otsu, fixed:VALUE or top:FRACTION");
        match s.split_once(':') {
            None if s == "otsu" => Ok(Threshold::Otsu),
            Some(("fixed", v)) => Ok(Threshold::Fixed(v.parse().map_err(|_| bad())?)),
            Some(("top", v)) => {
                v.parse().ok().filter(|f: &f32| *f > 0.0 && *f <= 1.0).map(Threshold::TopFraction).ok_or_else(bad)
            }
            _ => Err(bad()),
        }
    }
}

/// The spelling `FromStr` reads: otsu, fixed:VALUE, top:FRACTION.
impl std::fmt::Display for Threshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Threshold::Otsu => write!(f, "otsu"),
            Threshold::Fixed(v) => write!(f, "fixed:{v}"),
            Threshold::TopFraction(v) => write!(f, "top:{v}"),
        }
    }
}

/// The mask of `map` under `threshold`.
pub fn binarise(map: &[f32], threshold: Threshold) -> Vec<bool> {
    match threshold {
        Threshold::Fixed(t) => map.iter().map(|&v| v >= t).collect(),
        Threshold::Otsu => {
            let norm = crate::threshold::min_max(map);
            let t = crate::threshold::otsu(&norm);
            norm.iter().map(|&v| v > t).collect()
        }
        Threshold::TopFraction(f) => crate::threshold::top_k(map, ((map.len() as f32 * f).round() as usize).max(1)),
    }
}

/// Face-connected components of a mask on a [D, H, W] grid (row-major; [1, size, size] for a slice,
/// where they are 4-connected), largest first: (indices of each component).
pub fn components(mask: &[bool], [d, h, w]: [usize; 3]) -> Vec<Vec<usize>> {
    debug_assert_eq!(mask.len(), d * h * w);
    let mut seen = vec![false; mask.len()];
    let mut out = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || seen[start] {
            continue;
        }
        let (mut stack, mut comp) = (vec![start], Vec::new());
        seen[start] = true;
        while let Some(q) = stack.pop() {
            comp.push(q);
            let (z, y, x) = (q / (h * w), (q / w) % h, q % w);
            let nbs = [
                (z > 0).then(|| q - h * w),
                (z + 1 < d).then(|| q + h * w),
                (y > 0).then(|| q - w),
                (y + 1 < h).then(|| q + w),
                (x > 0).then(|| q - 1),
                (x + 1 < w).then(|| q + 1),
            ];
            for nb in nbs.into_iter().flatten() {
                if mask[nb] && !seen[nb] {
                    seen[nb] = true;
                    stack.push(nb);
                }
            }
        }
        out.push(comp);
    }
    out.sort_by_key(|c| std::cmp::Reverse(c.len()));
    out
}

/// Keeps the largest component (on a [D, H, W] grid) and any other at least `min_ratio` of its size.
pub fn keep_large_components(mask: &[bool], dims: [usize; 3], min_ratio: f64) -> Vec<bool> {
    let comps = components(mask, dims);
    let mut out = vec![false; mask.len()];
    if let Some(largest) = comps.first().map(Vec::len) {
        for c in comps.iter().filter(|c| c.len() as f64 >= min_ratio * largest as f64) {
            c.iter().for_each(|&q| out[q] = true);
        }
    }
    out
}

/// The CLIP ROI of a slice (thresholded, before the margin) and the seconds it took: computed once per
/// slice and charged to every method run that uses it.
#[derive(Clone, Debug, Default)]
pub struct ClipRoi {
    /// The thresholded map with small components dropped (before the margin).
    pub mask: Option<Vec<bool>>,
    /// The organ probability map on the model grid.
    pub probability: Option<Vec<f32>>,
    /// Seconds the map took (text features, image features, threshold).
    pub seconds: f64,
}

/// How the CLIP text side describes organs.
#[derive(Clone, Debug, PartialEq)]
pub enum Prompts {
    /// CoOp's learned context vectors (the folder's `config.json` + `model.safetensors`).
    Coop,
    /// The hand-written template of the modality ("a CT image of the {organ}", "an MR image of the
    /// {organ}") for every class.
    Template,
    /// This prompt for the target organ (the other classes use the template).
    Custom(String),
}

/// Where the CLIP ROI comes from: model folders (bundled ones when `None`), prompts and threshold.
#[derive(Clone, Debug, PartialEq)]
pub struct ClipOptions {
    /// transformers CLIPModel folder; default: the bundled weights/clip.
    pub clip: Option<PathBuf>,
    /// CoOp contexts folder; default: the bundled weights/coop.
    pub coop: Option<PathBuf>,
    /// Learned CoOp contexts, the hand template, or a custom prompt for the organ.
    pub prompts: Prompts,
    /// Threshold on the organ probability map.
    pub threshold: Threshold,
}

impl Default for ClipOptions {
    fn default() -> Self {
        Self { clip: None, coop: None, prompts: Prompts::Coop, threshold: Threshold::Otsu }
    }
}

/// CLIP weights and CoOp contexts of one modality, loaded once and used for many slices.
pub struct ClipRoiFinder<B: Backend> {
    clip: ClipModel<B>,
    coop: Option<CoopContexts>,
    classes: Vec<String>,
    prompt: Option<String>,
    threshold: Threshold,
    modality: Modality,
}

impl<B: Backend> ClipRoiFinder<B> {
    /// Loads CLIP (and CoOp) onto `backend` from `options` (bundled folders when none are given), with
    /// the prompts of `modality` (the images' modality: `Intensity::modality`).
    pub fn load(backend: &B, options: &ClipOptions, modality: Modality) -> Result<Self> {
        let clip_dir = match &options.clip {
            Some(d) => d.clone(),
            None => bundled("clip")?,
        };
        let clip = ClipModel::load_dir(backend, &clip_dir)?;
        // The tokenizer's vocabulary is built with the weights, not in the first slice's ROI seconds.
        ClipTokenizer::shared();
        let classes = std::iter::once("background".to_string())
            .chain(FLARE22_ORGANS.iter().map(|(_, n)| n.to_string()))
            .collect();
        let coop = match &options.prompts {
            Prompts::Coop => {
                let dir = match &options.coop {
                    Some(d) => d.clone(),
                    None => bundled("coop")?,
                };
                Some(CoopContexts::load_dir(&dir, modality).map_err(|e| Error::input(&dir, e))?)
            }
            Prompts::Template | Prompts::Custom(_) => None,
        };
        let prompt = match &options.prompts {
            Prompts::Custom(p) => Some(p.clone()),
            _ => None,
        };
        Ok(Self { clip, coop, classes, prompt, threshold: options.threshold, modality })
    }

    /// Normalised text features of every class for prompts of `class` (a FLARE22 id): built once per
    /// organ, then used for any number of slices.
    pub fn localiser(&self, backend: &B, class: usize) -> Result<ClipLocaliser<'_, B>> {
        let prompt = self.prompt.as_deref().map(|p| (class, p));
        ClipLocaliser::new(backend, &self.clip, &self.classes, self.coop.as_ref(), prompt, hand_template(self.modality))
    }

    /// The threshold that turns probability maps into masks.
    pub fn threshold(&self) -> Threshold {
        self.threshold
    }

    /// The CLIP ROI of a `size` x `size` slice windowed to [0, 1]: organ probability map of `class` (a
    /// FLARE22 id), thresholded, small components dropped. Seconds count the text features, map and
    /// threshold (not the loading of the weights or the tokenizer's vocabulary).
    pub fn roi(&self, backend: &B, image: &[f32], size: usize, class: usize) -> Result<ClipRoi> {
        let started = Instant::now();
        let probability = self.localiser(backend, class)?.probability_map(backend, image, size, class)?;
        let mask = keep_large_components(&binarise(&probability, self.threshold), [1, size, size], 0.2);
        Ok(ClipRoi { mask: Some(mask), probability: Some(probability), seconds: started.elapsed().as_secs_f64() })
    }
}
