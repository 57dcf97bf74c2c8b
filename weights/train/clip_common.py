"""CLIP pieces shared by the CLIP/CoOp training and the Rust parity fixtures: the same MaskCLIP dense
features, prompt assembly and text-from-embeddings path as src/models/clip.rs and src/roi.rs."""
import glob
import json
import os

import torch
from transformers import CLIPTokenizer
from transformers.masking_utils import create_causal_mask

MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


def to_clip_input(gray, size):
    """(N, H, W) windowed slices in [0, 1] -> (N, 3, size, size) CLIP-normalised (bilinear resize)."""
    x = torch.nn.functional.interpolate(gray[:, None], size=(size, size), mode="bilinear", align_corners=False)
    return (x.expand(-1, 3, -1, -1) - MEAN) / STD


def perturb_layer_norms(model, scale=0.1):
    """Default init leaves LayerNorms at identity: perturb them (in place, with torch's global RNG) so that
    parity fixtures cover their arithmetic."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "layrnorm" in name:
                p.add_(torch.randn_like(p) * scale)


def dense_features(model, pixel_values):
    """MaskCLIP: the last block's value path (no query-key mixing), post-LayerNorm, projection."""
    vm = model.vision_model
    h = vm.pre_layrnorm(vm.embeddings(pixel_values, interpolate_pos_encoding=True))
    for layer in vm.encoder.layers[:-1]:
        h = layer(h, None)
    last = vm.encoder.layers[-1]
    v = last.self_attn.out_proj(last.self_attn.v_proj(last.layer_norm1(h)))
    return model.visual_projection(vm.post_layernorm(v))[:, 1:]


def encode_text_embeddings(model, embeds, eot):
    """Text features from prompt embeddings (N, L, D) without positions, pooled at `eot` (N,)."""
    tm = model.text_model
    h = tm.embeddings(inputs_embeds=embeds)
    mask = create_causal_mask(config=tm.config, inputs_embeds=h, attention_mask=None, cache=None)
    h = tm.encoder(inputs_embeds=h, attention_mask=mask, is_causal=True).last_hidden_state
    h = tm.final_layer_norm(h)
    return model.text_projection(h[torch.arange(h.shape[0]), eot])


def coop_prompt(model, ctx, class_ids, sos, eos, dot, position="end"):
    """[SOS][ctx][class][.][EOS] (CoOp, class token at the end; 'front' puts the class first, 'middle'
    splits the context around it). Returns (embeddings (1, L, D), eot index)."""
    emb = model.text_model.embeddings.token_embedding
    tok = lambda ids: emb(torch.tensor(ids))
    cls = tok(class_ids)
    n = ctx.shape[0]
    if position == "end":
        body = [ctx, cls]
    elif position == "front":
        body = [cls, ctx]
    else:
        body = [ctx[: n // 2], cls, ctx[n // 2:]]
    seq = torch.cat([tok([sos])] + body + [tok([dot, eos])], 0)
    return seq[None], seq.shape[0] - 1


def bpe_file():
    """OpenAI's BPE merges as shipped by the instant-clip-tokenizer crate (cargo fetch puts it here)."""
    hits = sorted(glob.glob(os.path.expanduser("~/.cargo/registry/src/*/instant-clip-tokenizer-*/bpe_simple_vocab_16e6.txt")))
    if not hits:
        raise SystemExit("bpe_simple_vocab_16e6.txt not found: run `cargo fetch` first")
    return hits[-1]


def tokenizer(workdir):
    """transformers' CLIPTokenizer built from the same BPE file the Rust tokenizer uses, exactly as
    OpenAI's simple_tokenizer builds its vocabulary."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1)) + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    byte_chars = [chr(c) for c in cs]
    with open(bpe_file(), encoding="utf-8") as f:
        merges = f.read().split("\n")[1: 49152 - 256 - 2 + 1]
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "vocab.json"), "w") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f)
    with open(os.path.join(workdir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(os.path.join(workdir, "vocab.json"), os.path.join(workdir, "merges.txt"))
