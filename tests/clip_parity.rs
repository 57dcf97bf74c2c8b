//! The Rust CLIP towers against transformers outputs saved by tests/fixtures/make_clip_fixtures.py.

use std::path::PathBuf;
use xaiclip::backend::CpuBackend;
use xaiclip::models::clip::{ClassPosition, ClipConfig, ClipModel, ClipTokenizer};
use xaiclip::tensor::Tensor;
use xaiclip::weights::WeightsFile;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip_tiny")
}

/// Max relative error, denominators floored at 1% of the reference's largest magnitude (values that
/// cross zero have no meaningful relative error).
fn err(got: &Tensor, want: &Tensor) -> f32 {
    got.max_rel_error(want, 0.01 * want.max_abs())
}

#[test]
fn image_text_dense_and_coop_features_match_transformers() {
    let model = ClipModel::load_dir(&CpuBackend, &fixture()).unwrap();
    let io = WeightsFile::open(&fixture().join("io.safetensors")).unwrap();
    let image = model.encode_image(&CpuBackend, &io.get("images").unwrap()).unwrap();
    let e = err(&image, &io.get("image_embeds").unwrap());
    println!("image features: {e:.2e}");
    assert!(e < 1e-4, "image features: {e}");

    let ids = io.get("ids");
    assert!(ids.is_err(), "ids are int32, not weights");
    let seqs = vec![vec![998, 5, 17, 300, 42, 999, 0, 0], vec![998, 7, 999, 0, 0, 0, 0, 0]];
    let text = model.encode_text_ids(&CpuBackend, &seqs).unwrap();
    let e = err(&text, &io.get("text_embeds").unwrap());
    println!("text features: {e:.2e}");
    assert!(e < 1e-4, "text features: {e}");

    for (input, want) in [("images", "dense"), ("large", "dense_large")] {
        let (dense, gh, gw) = model.dense_image_features(&CpuBackend, &io.get(input).unwrap()).unwrap();
        let e = err(&dense, &io.get(want).unwrap());
        println!("dense features ({input}, {gh}x{gw} patches): {e:.2e}");
        assert!(e < 1e-4, "{want}: {e}");
    }

    let ctx = io.get("ctx").unwrap();
    let (prompt, eot) = model.prompt_embeddings(&ctx, &[11, 12], ClassPosition::End, (998, 13, 999)).unwrap();
    let e = err(&prompt, &io.get("prompt").unwrap());
    assert!(e < 1e-6, "prompt assembly: {e}");
    let (l, d) = (prompt.shape()[0], prompt.shape()[1]);
    let coop = model.encode_text_embeddings(&CpuBackend, &prompt.reshape(&[1, l, d]).unwrap(), &[eot]).unwrap();
    let e = err(&coop, &io.get("coop_text").unwrap());
    println!("CoOp text features: {e:.2e}");
    assert!(e < 1e-4, "CoOp text features: {e}");
}

/// `encode_prompts` (how the CLIP ROI encodes every class's CoOp prompt in one batch, the shorter ones
/// padded with zero rows after their end): the causal text tower must give each the features it gives it
/// alone.
#[test]
fn coop_prompts_in_one_padded_batch_equal_each_alone() {
    let model = ClipModel::load_dir(&CpuBackend, &fixture()).unwrap();
    let ctx = WeightsFile::open(&fixture().join("io.safetensors")).unwrap().get("ctx").unwrap();
    let prompts: Vec<(Tensor, usize)> = [&[11u32][..], &[11, 12, 40], &[7, 8]]
        .iter()
        .map(|name| model.prompt_embeddings(&ctx, name, ClassPosition::End, (998, 13, 999)).unwrap())
        .collect();
    let d = prompts[0].0.shape()[1];
    let l = prompts.iter().map(|(p, _)| p.shape()[0]).max().unwrap();
    assert!(prompts.iter().any(|(p, _)| p.shape()[0] < l), "the case needs prompts of different lengths");
    let together = model.encode_prompts(&CpuBackend, &prompts).unwrap();
    let width = together.shape()[1];
    for (i, (p, e)) in prompts.iter().enumerate() {
        let alone = model
            .encode_text_embeddings(&CpuBackend, &p.clone().reshape(&[1, p.shape()[0], d]).unwrap(), &[*e])
            .unwrap();
        let row = Tensor::new(&[1, width], together.data()[i * width..][..width].to_vec()).unwrap();
        let e = err(&row, &alone);
        // Float rounding of other GEMM shapes (3.7e-6 seen); a prompt that saw its padding, or another
        // prompt's rows, would be off by far more.
        assert!(e < 2e-5, "prompt {i}: batched vs alone {e:e}");
    }
}

#[test]
fn tokenizer_matches_transformers_clip_tokenizer() {
    let text = std::fs::read_to_string(fixture().join("tokens.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let tok = ClipTokenizer::default();
    for (prompt, ids) in v["prompts"].as_array().unwrap().iter().zip(v["ids"].as_array().unwrap()) {
        let want: Vec<u32> = ids.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        assert_eq!(tok.tokenize(prompt.as_str().unwrap()), want, "{prompt}");
    }
}

#[test]
fn vit_b16_shaped_model_builds_and_runs() {
    // Random weights through the same names and shapes a real openai/clip-vit-base-patch16 uses.
    let model = ClipModel::random(&CpuBackend, ClipConfig::vit_b16(), 1).unwrap();
    let image = Tensor::zeros(&[1, 3, 224, 224]);
    let (dense, gh, gw) = model.dense_image_features(&CpuBackend, &image).unwrap();
    assert_eq!((dense.shape(), gh, gw), (&[1usize, 196, 512][..], 14, 14));
    let text = model.encode_text_ids(&CpuBackend, &[ClipTokenizer::default().tokenize("a photo of a liver")]).unwrap();
    assert_eq!(text.shape(), &[1, 512]);
    assert!(text.data().iter().all(|v| v.is_finite()));
}

/// The published CLIP layouts (tests/fixtures/make_clip_layout_fixtures.py): OpenAI ViT-B/32 (PubMedCLIP)
/// and ViT-L/14 geometry, float16 weights, against transformers.
#[test]
fn vit_b32_and_l14_layouts_match_transformers() {
    for (name, grid) in [("clip_vit_b32_layout", 7), ("clip_vit_l14_layout", 16)] {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
        let model = ClipModel::load_dir(&CpuBackend, &dir).unwrap();
        let io = WeightsFile::open(&dir.join("io.safetensors")).unwrap();
        let image = model.encode_image(&CpuBackend, &io.get("images").unwrap()).unwrap();
        let e = err(&image, &io.get("image_embeds").unwrap());
        println!("{name} image features: {e:.2e}");
        assert!(e < 1e-4, "{name} image features: {e}");
        let text = model.encode_text_ids(&CpuBackend, &[vec![998, 5, 17, 300, 42, 999, 0, 0]]).unwrap();
        let e = err(&text, &io.get("text_embeds").unwrap());
        println!("{name} text features: {e:.2e}");
        assert!(e < 1e-4, "{name} text features: {e}");
        let (dense, gh, gw) = model.dense_image_features(&CpuBackend, &io.get("images").unwrap()).unwrap();
        assert_eq!((gh, gw), (grid, grid), "{name}: patch grid");
        let e = err(&dense, &io.get("dense").unwrap());
        println!("{name} dense features ({gh}x{gw}): {e:.2e}");
        assert!(e < 1e-4, "{name} dense features: {e}");
        if let Ok(large) = io.get("large") {
            let (dense, gh, gw) = model.dense_image_features(&CpuBackend, &large).unwrap();
            let e = err(&dense, &io.get("dense_large").unwrap());
            println!("{name} dense features at {} px ({gh}x{gw}, interpolated positions): {e:.2e}", large.shape()[2]);
            assert!(e < 1e-4, "{name} dense_large: {e}");
        }
    }
}
