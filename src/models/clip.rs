//! CLIP (Radford et al. 2021) in the Hugging Face `CLIPModel` layout: a ViT image tower and a causal
//! text transformer, read from `model.safetensors` + `config.json` with the transformers parameter names,
//! so a real checkpoint such as openai/clip-vit-base-patch16 loads as well as the bundled small model.
//!
//! Beyond the pooled embeddings, `dense_image_features` gives one joint-space feature per patch the
//! MaskCLIP way (Zhou et al. 2022): the last block's value path without the query-key mixing, then the
//! final LayerNorm and the projection. Host-side steps (patchify, embedding lookups) are small; every
//! transformer op runs on the backend.

use crate::backend::{Activation, Backend};
use crate::error::Error;
use crate::tensor::Tensor;
use crate::weights::{open_model_dir, ParamReader};
use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use std::path::Path;

/// CLIP's image normalisation (OpenAI), applied after the grey slice is copied to three channels.
pub const IMAGE_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// Per-channel standard deviation of CLIP's image normalisation (OpenAI).
pub const IMAGE_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

#[derive(Clone, Debug, PartialEq)]
/// One transformer tower's shape.
pub struct TowerConfig {
    /// Width of the residual stream.
    pub hidden: usize,
    /// Width of the MLP.
    pub intermediate: usize,
    /// Attention heads.
    pub heads: usize,
    /// Blocks.
    pub layers: usize,
    /// MLP activation.
    pub act: Activation,
    /// LayerNorm epsilon.
    pub eps: f32,
}

#[derive(Clone, Debug, PartialEq)]
/// A transformers `CLIPConfig`: both towers and the projection.
pub struct ClipConfig {
    /// The image tower.
    pub vision: TowerConfig,
    /// Image side the positions were trained for.
    pub image_size: usize,
    /// Patch side.
    pub patch_size: usize,
    /// The text tower.
    pub text: TowerConfig,
    /// Tokenizer vocabulary size.
    pub vocab_size: usize,
    /// Text positions.
    pub max_positions: usize,
    /// Token id that ends a prompt (its feature is the prompt's).
    pub eos_token_id: usize,
    /// Width of the joint embedding.
    pub projection_dim: usize,
}

fn tower(v: &Value, defaults: (usize, usize, usize, usize)) -> Result<TowerConfig> {
    let get = |k: &str, d: usize| v.get(k).and_then(Value::as_u64).map_or(d, |x| x as usize);
    let act = match v.get("hidden_act").and_then(Value::as_str).unwrap_or("quick_gelu") {
        "quick_gelu" => Activation::QuickGelu,
        "gelu" => Activation::Gelu,
        other => bail!("hidden_act {other:?} is not supported (quick_gelu or gelu)"),
    };
    let t = TowerConfig {
        hidden: get("hidden_size", defaults.0),
        intermediate: get("intermediate_size", defaults.1),
        heads: get("num_attention_heads", defaults.2),
        layers: get("num_hidden_layers", defaults.3),
        act,
        eps: v.get("layer_norm_eps").and_then(Value::as_f64).unwrap_or(1e-5) as f32,
    };
    ensure!(
        t.heads > 0 && t.hidden.is_multiple_of(t.heads),
        "hidden_size {} is not divisible by num_attention_heads {}",
        t.hidden,
        t.heads
    );
    Ok(t)
}

impl ClipConfig {
    /// Parses transformers' CLIPConfig JSON (text_config, vision_config, projection_dim); absent keys
    /// take transformers' defaults (ViT-B/32 sizes).
    pub fn from_json(text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text).context("invalid JSON")?;
        let empty = Value::Object(Default::default());
        let (tv, vv) = (v.get("text_config").unwrap_or(&empty), v.get("vision_config").unwrap_or(&empty));
        let get = |o: &Value, k: &str, d: usize| o.get(k).and_then(Value::as_u64).map_or(d, |x| x as usize);
        let c = Self {
            vision: tower(vv, (768, 3072, 12, 12))?,
            image_size: get(vv, "image_size", 224),
            patch_size: get(vv, "patch_size", 32),
            text: tower(tv, (512, 2048, 8, 12))?,
            vocab_size: get(tv, "vocab_size", 49408),
            max_positions: get(tv, "max_position_embeddings", 77),
            eos_token_id: get(tv, "eos_token_id", 49407),
            projection_dim: get(&v, "projection_dim", 512),
        };
        ensure!(
            c.patch_size > 0 && c.image_size.is_multiple_of(c.patch_size),
            "image_size {} is not a multiple of patch_size {}",
            c.image_size,
            c.patch_size
        );
        Ok(c)
    }

    /// The ViT-B/16 shapes of openai/clip-vit-base-patch16.
    pub fn vit_b16() -> Self {
        let t = |hidden, heads| TowerConfig {
            hidden,
            intermediate: 4 * hidden,
            heads,
            layers: 12,
            act: Activation::QuickGelu,
            eps: 1e-5,
        };
        Self {
            vision: t(768, 12),
            image_size: 224,
            patch_size: 16,
            text: t(512, 8),
            vocab_size: 49408,
            max_positions: 77,
            eos_token_id: 49407,
            projection_dim: 512,
        }
    }

    /// Patches per side at the trained image size.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
}

struct Block<B: Backend> {
    ln1: (B::Tensor, B::Tensor),
    q: (B::Tensor, B::Tensor),
    k: (B::Tensor, B::Tensor),
    v: (B::Tensor, B::Tensor),
    out: (B::Tensor, B::Tensor),
    ln2: (B::Tensor, B::Tensor),
    fc1: (B::Tensor, B::Tensor),
    fc2: (B::Tensor, B::Tensor),
}

struct Tower<B: Backend> {
    config: TowerConfig,
    blocks: Vec<Block<B>>,
}

/// CLIP (transformers `CLIPModel` names) on a backend: image and text towers, projections.
pub struct ClipModel<B: Backend> {
    config: ClipConfig,
    // Host copies: embedding lookups and the class/position sums happen before upload.
    patch_weight: Tensor,
    class_embedding: Tensor,
    vision_positions: Tensor,
    token_embedding: Tensor,
    text_positions: Tensor,
    pre_ln: (B::Tensor, B::Tensor),
    vision: Tower<B>,
    post_ln: (B::Tensor, B::Tensor),
    visual_projection: B::Tensor,
    text: Tower<B>,
    final_ln: (B::Tensor, B::Tensor),
    text_projection: B::Tensor,
    /// exp of the learned temperature.
    pub logit_scale: f32,
}

fn pair<B: Backend>(
    b: &B,
    p: &mut ParamReader,
    prefix: &str,
    shape_w: &[usize],
    shape_b: &[usize],
    names: (&str, &str),
) -> Result<(B::Tensor, B::Tensor)> {
    let w = p.take(&format!("{prefix}.{}", names.0), shape_w);
    let bias = p.take(&format!("{prefix}.{}", names.1), shape_b);
    Ok((b.upload(&w)?, b.upload(&bias)?))
}

fn tower_load<B: Backend>(b: &B, p: &mut ParamReader, prefix: &str, c: &TowerConfig) -> Result<Tower<B>> {
    let (d, f) = (c.hidden, c.intermediate);
    let wb = ("weight", "bias");
    let blocks = (0..c.layers)
        .map(|i| {
            let l = format!("{prefix}.encoder.layers.{i}");
            Ok(Block {
                ln1: pair(b, p, &format!("{l}.layer_norm1"), &[d], &[d], wb)?,
                q: pair(b, p, &format!("{l}.self_attn.q_proj"), &[d, d], &[d], wb)?,
                k: pair(b, p, &format!("{l}.self_attn.k_proj"), &[d, d], &[d], wb)?,
                v: pair(b, p, &format!("{l}.self_attn.v_proj"), &[d, d], &[d], wb)?,
                out: pair(b, p, &format!("{l}.self_attn.out_proj"), &[d, d], &[d], wb)?,
                ln2: pair(b, p, &format!("{l}.layer_norm2"), &[d], &[d], wb)?,
                fc1: pair(b, p, &format!("{l}.mlp.fc1"), &[f, d], &[f], wb)?,
                fc2: pair(b, p, &format!("{l}.mlp.fc2"), &[d, f], &[d], wb)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Tower { config: c.clone(), blocks })
}

impl<B: Backend> ClipModel<B> {
    /// Loads `dir/config.json` and `dir/model.safetensors`.
    pub fn load_dir(backend: &B, dir: &Path) -> Result<Self> {
        let load = || {
            let (config, weights) = open_model_dir(dir, "CLIP", ClipConfig::from_json)?;
            Self::build(backend, config, ParamReader::new(&weights))
        };
        load().map_err(|e| Error::input(dir, e))
    }

    /// A randomly initialised model of any configuration (shape tests, benches).
    pub fn random(backend: &B, config: ClipConfig, seed: u64) -> Result<Self> {
        Self::build(backend, config, ParamReader::random(seed))
    }

    fn build(b: &B, config: ClipConfig, mut p: ParamReader) -> Result<Self> {
        let (dv, dt, proj, ps) = (config.vision.hidden, config.text.hidden, config.projection_dim, config.patch_size);
        let wb = ("weight", "bias");
        let patch_weight =
            p.take("vision_model.embeddings.patch_embedding.weight", &[dv, 3, ps, ps]).reshape(&[dv, 3 * ps * ps])?;
        let class_embedding = p.take("vision_model.embeddings.class_embedding", &[dv]);
        let vision_positions =
            p.take("vision_model.embeddings.position_embedding.weight", &[config.grid() * config.grid() + 1, dv]);
        let pre_ln = pair(b, &mut p, "vision_model.pre_layrnorm", &[dv], &[dv], wb)?;
        let vision = tower_load(b, &mut p, "vision_model", &config.vision)?;
        let post_ln = pair(b, &mut p, "vision_model.post_layernorm", &[dv], &[dv], wb)?;
        let visual_projection = b.upload(&p.take("visual_projection.weight", &[proj, dv]))?;
        let token_embedding = p.take("text_model.embeddings.token_embedding.weight", &[config.vocab_size, dt]);
        let text_positions = p.take("text_model.embeddings.position_embedding.weight", &[config.max_positions, dt]);
        let text = tower_load(b, &mut p, "text_model", &config.text)?;
        let final_ln = pair(b, &mut p, "text_model.final_layer_norm", &[dt], &[dt], wb)?;
        let text_projection = b.upload(&p.take("text_projection.weight", &[proj, dt]))?;
        let logit_scale = p.take("logit_scale", &[]).data().first().copied().unwrap_or(0.0).exp();
        // Position ids are buffers in some transformers versions; they carry nothing we need.
        p.finish(&["position_ids"])?;
        Ok(Self {
            config,
            patch_weight,
            class_embedding,
            vision_positions,
            token_embedding,
            text_positions,
            pre_ln,
            vision,
            post_ln,
            visual_projection,
            text,
            final_ln,
            text_projection,
            logit_scale,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// Token embedding rows for ids (host), for prompts assembled from learned context vectors.
    pub fn token_embeddings(&self, ids: &[u32]) -> Result<Tensor> {
        let d = self.config.text.hidden;
        let mut out = Vec::with_capacity(ids.len() * d);
        for &id in ids {
            ensure!(
                (id as usize) < self.config.vocab_size,
                "token id {id} outside the vocabulary ({})",
                self.config.vocab_size
            );
            out.extend_from_slice(&self.token_embedding.data()[id as usize * d..(id as usize + 1) * d]);
        }
        Tensor::new(&[ids.len(), d], out)
    }

    fn run_blocks(
        &self,
        b: &B,
        tower: &Tower<B>,
        mut h: B::Tensor,
        causal: bool,
        skip_last: bool,
    ) -> Result<B::Tensor> {
        let n = tower.blocks.len() - skip_last as usize;
        for blk in &tower.blocks[..n] {
            let x = b.layer_norm(&h, &blk.ln1.0, &blk.ln1.1, tower.config.eps)?;
            let (q, k, v) = (
                b.linear(&x, &blk.q.0, Some(&blk.q.1))?,
                b.linear(&x, &blk.k.0, Some(&blk.k.1))?,
                b.linear(&x, &blk.v.0, Some(&blk.v.1))?,
            );
            let a = b.attention(&q, &k, &v, tower.config.heads, causal)?;
            b.add(&mut h, &b.linear(&a, &blk.out.0, Some(&blk.out.1))?)?;
            let x = b.layer_norm(&h, &blk.ln2.0, &blk.ln2.1, tower.config.eps)?;
            let mut f = b.linear(&x, &blk.fc1.0, Some(&blk.fc1.1))?;
            b.activate(&mut f, tower.config.act)?;
            b.add(&mut h, &b.linear(&f, &blk.fc2.0, Some(&blk.fc2.1))?)?;
        }
        Ok(h)
    }

    /// Vision tokens after pre-LayerNorm: [CLS, patches] + positions (bicubically resized when the image
    /// is not the configured size, as transformers' interpolate_pos_encoding does).
    fn vision_tokens(&self, b: &B, images: &Tensor) -> Result<(B::Tensor, usize, usize)> {
        let (n, c, h, w) = images.nchw()?;
        let ps = self.config.patch_size;
        ensure!(
            c == 3 && h % ps == 0 && w % ps == 0,
            "CLIP expects (N, 3, H, W) with H, W multiples of {ps}, got {:?}",
            images.shape()
        );
        let (gh, gw) = (h / ps, w / ps);
        let d = self.config.vision.hidden;
        let mut patches = vec![0f32; n * gh * gw * 3 * ps * ps];
        for (i, row) in patches.chunks_mut(3 * ps * ps).enumerate() {
            let (img, p) = (i / (gh * gw), i % (gh * gw));
            let (py, px) = (p / gw, p % gw);
            for ch in 0..3 {
                for y in 0..ps {
                    let src = ((img * 3 + ch) * h + py * ps + y) * w + px * ps;
                    row[(ch * ps + y) * ps..(ch * ps + y + 1) * ps].copy_from_slice(&images.data()[src..src + ps]);
                }
            }
        }
        let patches = b.upload(&Tensor::new(&[n, gh * gw, 3 * ps * ps], patches)?)?;
        let embedded = b.download(&b.linear(&patches, &b.upload(&self.patch_weight)?, None)?)?;
        let positions = self.positions_for(gh, gw)?;
        let mut tokens = vec![0f32; n * (gh * gw + 1) * d];
        for i in 0..n {
            let dst = &mut tokens[i * (gh * gw + 1) * d..(i + 1) * (gh * gw + 1) * d];
            dst[..d].copy_from_slice(self.class_embedding.data());
            dst[d..].copy_from_slice(&embedded.data()[i * gh * gw * d..(i + 1) * gh * gw * d]);
            dst.iter_mut().zip(positions.data()).for_each(|(t, p)| *t += p);
        }
        let tokens = b.upload(&Tensor::new(&[n, gh * gw + 1, d], tokens)?)?;
        Ok((b.layer_norm(&tokens, &self.pre_ln.0, &self.pre_ln.1, self.config.vision.eps)?, gh, gw))
    }

    fn positions_for(&self, gh: usize, gw: usize) -> Result<Tensor> {
        let g = self.config.grid();
        let d = self.config.vision.hidden;
        if (gh, gw) == (g, g) {
            return Ok(self.vision_positions.clone());
        }
        let table = self.vision_positions.data();
        let mut out = table[..d].to_vec();
        let (ty, tx) = (bicubic_taps(g, gh), bicubic_taps(g, gw));
        for wy in &ty {
            for wx in &tx {
                let mut acc = vec![0f32; d];
                for &(sy, fy) in wy {
                    for &(sx, fx) in wx {
                        let src = &table[(1 + sy * g + sx) * d..(2 + sy * g + sx) * d];
                        acc.iter_mut().zip(src).for_each(|(a, s)| *a += fy * fx * s);
                    }
                }
                out.extend(acc);
            }
        }
        Tensor::new(&[gh * gw + 1, d], out)
    }

    /// Pooled image embeddings (N, projection_dim), not normalised. `images`: (N, 3, H, W), CLIP-normalised.
    pub fn encode_image(&self, b: &B, images: &Tensor) -> Result<Tensor> {
        let (tokens, _, _) = self.vision_tokens(b, images)?;
        let h = b.download(&self.run_blocks(b, &self.vision, tokens, false, false)?)?;
        let (n, l, d) = (h.shape()[0], h.shape()[1], h.shape()[2]);
        let cls: Vec<f32> = (0..n).flat_map(|i| h.data()[i * l * d..i * l * d + d].to_vec()).collect();
        let cls = b.layer_norm(
            &b.upload(&Tensor::new(&[n, d], cls)?)?,
            &self.post_ln.0,
            &self.post_ln.1,
            self.config.vision.eps,
        )?;
        b.download(&b.linear(&cls, &self.visual_projection, None)?)
    }

    /// Per-patch joint-space features (N, gh * gw, projection_dim) and the patch grid (gh, gw).
    pub fn dense_image_features(&self, b: &B, images: &Tensor) -> Result<(Tensor, usize, usize)> {
        let (tokens, gh, gw) = self.vision_tokens(b, images)?;
        let h = self.run_blocks(b, &self.vision, tokens, false, true)?;
        let last = self.vision.blocks.last().context("CLIP vision tower has no layers")?;
        let x = b.layer_norm(&h, &last.ln1.0, &last.ln1.1, self.config.vision.eps)?;
        let v = b.linear(&b.linear(&x, &last.v.0, Some(&last.v.1))?, &last.out.0, Some(&last.out.1))?;
        let v = b.layer_norm(&v, &self.post_ln.0, &self.post_ln.1, self.config.vision.eps)?;
        let all = b.download(&b.linear(&v, &self.visual_projection, None)?)?;
        // Drop the class token.
        let (n, l, p) = (all.shape()[0], all.shape()[1], all.shape()[2]);
        let patches: Vec<f32> = (0..n).flat_map(|i| all.data()[(i * l + 1) * p..(i + 1) * l * p].to_vec()).collect();
        Ok((Tensor::new(&[n, l - 1, p], patches)?, gh, gw))
    }

    /// Text embeddings (N, projection_dim) from prompt embeddings (N, L, width) without positions, pooled
    /// at each prompt's end-of-text position.
    pub fn encode_text_embeddings(&self, b: &B, embeds: &Tensor, eot: &[usize]) -> Result<Tensor> {
        let [n, l, d] = embeds.shape()[..] else {
            bail!("text embeddings must be (N, L, D), got {:?}", embeds.shape())
        };
        ensure!(
            l <= self.config.max_positions && d == self.config.text.hidden && eot.len() == n,
            "prompt of {l} tokens x {d} does not fit the text tower"
        );
        let mut x = embeds.clone();
        for row in x.data_mut().chunks_mut(l * d) {
            row.iter_mut().zip(&self.text_positions.data()[..l * d]).for_each(|(a, p)| *a += p);
        }
        let h = self.run_blocks(b, &self.text, b.upload(&x)?, true, false)?;
        let h = b.download(&b.layer_norm(&h, &self.final_ln.0, &self.final_ln.1, self.config.text.eps)?)?;
        let mut pooled = Vec::with_capacity(n * d);
        for (i, &e) in eot.iter().enumerate() {
            ensure!(e < l, "end-of-text position {e} outside the prompt of {l} tokens");
            pooled.extend_from_slice(&h.data()[(i * l + e) * d..(i * l + e + 1) * d]);
        }
        b.download(&b.linear(&b.upload(&Tensor::new(&[n, d], pooled)?)?, &self.text_projection, None)?)
    }

    /// Text embeddings (N, projection_dim) of prompts of different lengths (each (L_i, width) embeddings
    /// and its end-of-text position, as [`Self::prompt_embeddings`] gives them) in one batch: the shorter
    /// ones padded with zero rows after their end, which the causal text tower's end-of-text features
    /// never see (one forward where a forward per prompt took ~15 ms for the 14 CoOp classes).
    pub fn encode_prompts(&self, b: &B, prompts: &[(Tensor, usize)]) -> Result<Tensor> {
        let l = prompts.iter().map(|(emb, _)| emb.shape()[0]).max().unwrap_or(0);
        let d = self.config.text.hidden;
        let mut batch = vec![0f32; prompts.len() * l * d];
        for ((emb, _), rows) in prompts.iter().zip(batch.chunks_mut(l * d)) {
            ensure!(emb.shape()[1] == d, "prompt embeddings of width {} for a text tower of {d}", emb.shape()[1]);
            rows[..emb.data().len()].copy_from_slice(emb.data());
        }
        let eot: Vec<usize> = prompts.iter().map(|&(_, e)| e).collect();
        self.encode_text_embeddings(b, &Tensor::new(&[prompts.len(), l, d], batch)?, &eot)
    }

    /// Text embeddings for token id sequences (each with its start and end tokens); pooled at the first
    /// eos_token_id.
    pub fn encode_text_ids(&self, b: &B, ids: &[Vec<u32>]) -> Result<Tensor> {
        let l = ids.iter().map(Vec::len).max().unwrap_or(0);
        let mut embeds = Vec::new();
        let mut eot = Vec::new();
        for seq in ids {
            let mut padded = seq.clone();
            padded.resize(l, 0);
            embeds.extend(self.token_embeddings(&padded)?.into_data());
            eot.push(
                seq.iter().position(|&t| t as usize == self.config.eos_token_id).unwrap_or(seq.len().saturating_sub(1)),
            );
        }
        self.encode_text_embeddings(b, &Tensor::new(&[ids.len(), l, self.config.text.hidden], embeds)?, &eot)
    }
}

/// torch's bicubic (A = -0.75, align_corners = false, edge-clamped) taps resampling `from` to `to`.
fn bicubic_taps(from: usize, to: usize) -> Vec<Vec<(usize, f32)>> {
    let cubic = |x: f32| {
        let (a, x) = (-0.75f32, x.abs());
        if x <= 1.0 {
            ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
        } else if x < 2.0 {
            ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
        } else {
            0.0
        }
    };
    let scale = from as f32 / to as f32;
    (0..to)
        .map(|o| {
            let pos = (o as f32 + 0.5) * scale - 0.5;
            let base = pos.floor();
            let t = pos - base;
            (-1..=2)
                .map(|k| {
                    let idx = (base as isize + k).clamp(0, from as isize - 1) as usize;
                    (idx, cubic(t - k as f32))
                })
                .collect()
        })
        .collect()
}

/// Where the class name sits among CoOp's learned context vectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClassPosition {
    /// `[ctx][class]` (CoOp's default).
    End,
    /// `[ctx first half][class][ctx second half]`.
    Middle,
    /// `[class][ctx]`.
    Front,
}

/// The CLIP BPE tokenizer (OpenAI's vocabulary, as the instant-clip-tokenizer crate ships it).
pub struct ClipTokenizer {
    inner: instant_clip_tokenizer::Tokenizer,
}

impl Default for ClipTokenizer {
    fn default() -> Self {
        Self { inner: instant_clip_tokenizer::Tokenizer::new() }
    }
}

impl ClipTokenizer {
    /// The process's tokenizer, built on first use: building the vocabulary takes ~40 ms (most of a CLIP
    /// ROI's time at 128² when every localiser built its own), and it never changes.
    pub fn shared() -> &'static ClipTokenizer {
        static SHARED: std::sync::LazyLock<ClipTokenizer> = std::sync::LazyLock::new(ClipTokenizer::default);
        &SHARED
    }

    /// Token ids without start/end tokens (lower-cased, as CLIP's tokenizer does).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut tokens = Vec::new();
        self.inner.encode(text, &mut tokens);
        tokens.into_iter().map(|t| t.to_u16() as u32).collect()
    }

    /// The start-of-text token id.
    pub fn start(&self) -> u32 {
        self.inner.start_of_text().to_u16() as u32
    }

    /// The end-of-text token id.
    pub fn end(&self) -> u32 {
        self.inner.end_of_text().to_u16() as u32
    }

    /// `[SOS] text [EOS]`.
    pub fn tokenize(&self, text: &str) -> Vec<u32> {
        let mut ids = vec![self.start()];
        ids.extend(self.encode(text));
        ids.push(self.end());
        ids
    }
}

impl<B: Backend> ClipModel<B> {
    /// CoOp prompt embeddings `[SOS][context and class, by position][.][EOS]` (Zhou et al. 2022) and
    /// the end-of-text index. `ctx`: learned context vectors (n_ctx, width).
    pub fn prompt_embeddings(
        &self,
        ctx: &Tensor,
        class_ids: &[u32],
        position: ClassPosition,
        specials: (u32, u32, u32),
    ) -> Result<(Tensor, usize)> {
        let (sos, dot, eos) = specials;
        let [n, d] = ctx.shape()[..] else { bail!("context vectors must be (n_ctx, width), got {:?}", ctx.shape()) };
        ensure!(
            d == self.config.text.hidden,
            "context width {d} does not match the text tower ({})",
            self.config.text.hidden
        );
        let cls = self.token_embeddings(class_ids)?.into_data();
        let (c, half) = (ctx.data(), n / 2 * d);
        let body: Vec<&[f32]> = match position {
            ClassPosition::End => vec![c, &cls],
            ClassPosition::Front => vec![&cls, c],
            ClassPosition::Middle => vec![&c[..half], &cls, &c[half..]],
        };
        let mut seq = self.token_embeddings(&[sos])?.into_data();
        body.into_iter().for_each(|part| seq.extend_from_slice(part));
        seq.extend(self.token_embeddings(&[dot, eos])?.into_data());
        let len = seq.len() / d;
        ensure!(
            len <= self.config.max_positions,
            "prompt of {len} tokens exceeds the text tower's {} positions",
            self.config.max_positions
        );
        Ok((Tensor::new(&[len, d], seq)?, len - 1))
    }
}
