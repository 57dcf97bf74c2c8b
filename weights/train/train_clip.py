"""Train the bundled small CLIP (transformers CLIPModel layout) and the CoOp context vectors.

CLIP: ViT image tower + text tower on CT and MR slices (CT phantoms from `xaiclip phantom`, MR phantoms
from `xaiclip phantom --mr` in all three CHAOS sequences, and the training slices of the real CT; the
held-out block in weights/unet/split.json and the validation phantom seeds are never seen) with captions
listing the organs present ("a CT slice showing the liver, the spleen and the stomach", "an MR slice
showing ..."). Loss: the usual symmetric contrastive loss plus a dense patch-text loss: MaskCLIP patch
features (clip_common) against the prompts "a CT image of the {organ}" or "an MR image of the {organ}"
(and "... of the background"), cross-entropy against each patch's organ occupancy, so that patch
embeddings localise organs. CT slices are windowed, MR slices normalised by percentiles, as xaiclip does.

CoOp (Zhou et al. 2022): CLIP frozen, class-specific context vectors per modality (n_ctx = 16, class token
at the end) learned few-shot (16 slices per organ and modality) with the same dense loss.

    cargo build --release && cargo fetch
    python weights/train/train_clip.py --clip-minutes 22 --coop-minutes 5
    python weights/train/train_clip.py --init weights/clip ...   # continue from a trained CLIP

Writes weights/clip/{config.json, model.safetensors (fp16)}, weights/coop/{config.json, model.safetensors},
weights/clip/training.json.
"""
import json
import math
import os
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPModel

import clip_common
import common

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
CLASSES = ["background"] + common.ORGANS[1:]  # index = FLARE22 id, 0 = background
IMAGE = 224
PATCH = 16
MODALITIES = ["ct", "mr"]
TEMPLATES = {"ct": "a CT image of the {}", "mr": "an MR image of the {}"}
SLICE = {"ct": "a CT slice", "mr": "an MR slice"}
MR_SLICES = 20  # CHAOS-like 8 mm slices


def caption(present, modality):
    names = [f"the {common.ORGANS[o]}" for o in present]
    head = SLICE[modality]
    if not names:
        return f"{head} showing no abdominal organs"
    if len(names) == 1:
        return f"{head} showing {names[0]}"
    return f"{head} showing " + ", ".join(names[:-1]) + " and " + names[-1]


def occupancy(labels):
    """(N, 224, 224) FLARE22 ids -> (N, 196, 14) fraction of each patch covered by each class."""
    onehot = F.one_hot(torch.from_numpy(labels), len(CLASSES)).permute(0, 3, 1, 2).float()
    occ = F.avg_pool2d(onehot, PATCH)
    return occ.flatten(2).transpose(1, 2)


def prepare(hu, labels, normalised=False):
    x = torch.from_numpy((hu if normalised else common.window(hu)).astype(np.float32))
    x224 = F.interpolate(x[:, None], size=(IMAGE, IMAGE), mode="bilinear", align_corners=False)[:, 0]
    y224 = common.resize_labels(labels, IMAGE)
    return x224, y224


def dense_loss(model, pixels, occ, text_feats):
    """text_feats: (classes, D) for every image, or (B, classes, D), one set per image (its modality)."""
    f = F.normalize(clip_common.dense_features(model, pixels), dim=-1)
    t = F.normalize(text_feats, dim=-1)
    t = t.expand(f.shape[0], -1, -1) if t.dim() == 2 else t
    logits = model.logit_scale.exp().clamp(max=100) * torch.einsum("bpd,bcd->bpc", f, t)
    return -(occ * F.log_softmax(logits, -1)).sum(-1).mean()


def main():
    ap = common.parser(__doc__)
    ap.add_argument("--phantoms", type=int, default=24)
    ap.add_argument("--clip-minutes", type=float, default=22.0)
    ap.add_argument("--coop-minutes", type=float, default=5.0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--n-ctx", type=int, default=16)
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--mr-phantoms", type=int, default=12, help="MR phantom seeds, each in the three sequences")
    ap.add_argument("--init", default=None, help="a CLIP folder to continue from (default: from scratch)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng, split = common.seeded(args.seed, REPO)

    work = tempfile.mkdtemp()
    tok = clip_common.tokenizer(os.path.join(work, "tok"))
    real = common.load_real_cases(args.shared, args.xaiclip, work)
    images, labels, modality = [], [], []
    for name, (hu, lab) in real.items():
        held = set(split["cases"][name]["validation"]) | set(split["cases"][name]["guard"])
        idx = [k for k in range(hu.shape[0]) if k not in held]
        x, y = prepare(hu[idx], lab[idx])
        # Real slices are few: repeat them so they are a fair share of the data.
        for _ in range(6):
            images.append(x)
            labels.append(y)
            modality += [0] * len(x)
    for i in range(args.phantoms):
        hu, lab = common.load_phantom(args.xaiclip, work, 2000 + i, 256, 24)
        x, y = prepare(hu, lab)
        images.append(x)
        labels.append(y)
        modality += [0] * len(x)
    for i in range(args.mr_phantoms):
        for sequence in common.SEQUENCES:
            mr, lab = common.load_mr_phantom(args.xaiclip, work, 2000 + i, 256, MR_SLICES, sequence)
            x, y = prepare(mr, lab, normalised=True)
            images.append(x)
            labels.append(y)
            modality += [1] * len(x)
    X = torch.cat(images)
    Y = np.concatenate(labels)
    OCC = occupancy(Y)
    present = [[o for o in range(1, 14) if (Y[i] == o).mean() > 0.005] for i in range(len(Y))]
    captions = [caption(p, MODALITIES[m]) for p, m in zip(present, modality)]
    print(f"{len(X)} training slices, {len(set(captions))} distinct captions", flush=True)

    config = CLIPConfig(
        text_config=dict(hidden_size=96, intermediate_size=384, num_attention_heads=4, num_hidden_layers=4,
                         max_position_embeddings=77, hidden_act="quick_gelu"),
        vision_config=dict(hidden_size=128, intermediate_size=512, num_attention_heads=4, num_hidden_layers=4,
                           image_size=IMAGE, patch_size=PATCH, hidden_act="quick_gelu"),
        projection_dim=64)
    if args.init:
        model = CLIPModel.from_pretrained(args.init, dtype=torch.float32)
        config = model.config
    else:
        model = CLIPModel(config)
    organ_prompts = tok([TEMPLATES[m].format(c) for m in MODALITIES for c in CLASSES], padding=True, return_tensors="pt")
    MOD = torch.tensor(modality)

    def per_image(feats, idx):
        """(2 * classes, D) -> (B, classes, D): each image gets its modality's prompts."""
        return feats.view(len(MODALITIES), len(CLASSES), -1)[MOD[idx]]

    def text_features(batch):
        out = model.get_text_features(**batch)
        return getattr(out, "pooler_output", out)

    def augment(x):
        # Small intensity and geometric jitter; organ layout stays anatomical (no flips).
        b = x.shape[0]
        gain = torch.empty(b, 1, 1).uniform_(0.9, 1.1)
        bias = torch.empty(b, 1, 1).uniform_(-0.05, 0.05)
        return (x * gain + bias + torch.randn_like(x) * 0.02).clamp(0, 1)

    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.05)
    start, budget, step, history = time.time(), args.clip_minutes * 60, 0, []
    while time.time() - start < budget:
        frac = (time.time() - start) / budget
        for g in opt.param_groups:
            g["lr"] = 5e-4 * min(1.0, step / 100) * 0.5 * (1 + math.cos(math.pi * frac))
        idx = rng.sample(range(len(X)), args.batch)
        pixels = clip_common.to_clip_input(augment(X[idx]), IMAGE)
        caps = tok([captions[i] for i in idx], padding=True, return_tensors="pt")
        image_out = model.get_image_features(pixel_values=pixels)
        image_feats = F.normalize(getattr(image_out, "pooler_output", image_out), dim=-1)
        text_feats = F.normalize(text_features(caps), dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * image_feats @ text_feats.T
        # Identical captions are positives of each other.
        same = torch.tensor([[captions[i] == captions[j] for j in idx] for i in idx], dtype=torch.float32)
        target = same / same.sum(1, keepdim=True)
        contrastive = (-(target * F.log_softmax(logits, 1)).sum(1).mean() - (target * F.log_softmax(logits.T, 1)).sum(1).mean()) / 2
        dense = dense_loss(model, pixels, OCC[idx], per_image(text_features(organ_prompts), idx))
        loss = contrastive + 2.0 * dense
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 50 == 0:
            history.append({"step": step, "minutes": round((time.time() - start) / 60, 1), "contrastive": round(float(contrastive), 4), "dense": round(float(dense), 4)})
            print(json.dumps(history[-1]), flush=True)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)

    # CoOp: class-specific contexts, few-shot.
    sos, eos = tok.bos_token_id, tok.eos_token_id
    dot = tok(".", add_special_tokens=False)["input_ids"][0]
    class_ids = [tok(c, add_special_tokens=False)["input_ids"] for c in CLASSES]
    ctx = torch.nn.Parameter(torch.randn(len(MODALITIES), len(CLASSES), args.n_ctx, config.text_config.hidden_size) * 0.02)
    shots = set()
    for m in range(len(MODALITIES)):
        for o in range(1, 14):
            pool = [j for j in range(len(Y)) if o in present[j] and modality[j] == m]
            shots |= set(rng.sample(pool, min(args.shots, len(pool))))
    shots = sorted(shots)
    print(f"CoOp: {len(shots)} few-shot slices", flush=True)
    copt = torch.optim.Adam([ctx], lr=2e-3)

    def coop_features():
        """(modalities * classes, D)"""
        feats = []
        for m in range(len(MODALITIES)):
            for c in range(len(CLASSES)):
                emb, eot = clip_common.coop_prompt(model, ctx[m, c], class_ids[c], sos, eos, dot)
                feats.append(clip_common.encode_text_embeddings(model, emb, torch.tensor([eot])))
        return torch.cat(feats)

    start, cstep = time.time(), 0
    while time.time() - start < args.coop_minutes * 60:
        idx = rng.sample(shots, min(16, len(shots)))
        pixels = clip_common.to_clip_input(X[idx], IMAGE)
        loss = dense_loss(model, pixels, OCC[idx], per_image(coop_features(), idx))
        copt.zero_grad()
        loss.backward()
        copt.step()
        cstep += 1
        if cstep % 20 == 0:
            print(json.dumps({"coop_step": cstep, "dense": round(float(loss), 4)}), flush=True)

    clip_dir, coop_dir = os.path.join(REPO, "weights", "clip"), os.path.join(REPO, "weights", "coop")
    os.makedirs(clip_dir, exist_ok=True)
    os.makedirs(coop_dir, exist_ok=True)
    save_file({k: v.detach().half().contiguous() for k, v in model.state_dict().items()}, os.path.join(clip_dir, "model.safetensors"))
    with open(os.path.join(clip_dir, "config.json"), "w") as f:
        json.dump(config.to_dict(), f, indent=1, default=str)
    save_file({f"{m}/{CLASSES[c]}": ctx[i, c].detach().half().contiguous() for i, m in enumerate(MODALITIES) for c in range(len(CLASSES))},
              os.path.join(coop_dir, "model.safetensors"))
    with open(os.path.join(coop_dir, "config.json"), "w") as f:
        json.dump({"n_ctx": args.n_ctx, "class_position": "end", "classes": CLASSES, "modalities": TEMPLATES}, f, indent=1)

    # Localisation on the held-out real slices: fraction of organ pixels in the top 20% of patches.
    with torch.no_grad():
        text_hand = F.normalize(text_features(organ_prompts), dim=-1).view(len(MODALITIES), len(CLASSES), -1)
        text_coop = F.normalize(coop_features(), dim=-1).view(len(MODALITIES), len(CLASSES), -1)
        held_out = [(name, 0, *prepare(hu[split["cases"][name]["validation"]], lab[split["cases"][name]["validation"]])) for name, (hu, lab) in real.items()]
        for seed in split["phantom_validation_seeds"]:
            for sequence in common.SEQUENCES:
                mr, lab = common.load_mr_phantom(args.xaiclip, work, seed, 256, MR_SLICES, sequence)
                held_out.append((f"mr phantom {seed} {sequence}", 1, *prepare(mr, lab, normalised=True)))
        quality = {}
        for name, m, x, y in held_out:
            f = F.normalize(clip_common.dense_features(model, clip_common.to_clip_input(x, IMAGE)), dim=-1)
            for tag, t in (("hand", text_hand[m]), ("coop", text_coop[m])):
                prob = F.softmax(100 * f @ t.T, -1)  # (N, 196, 14)
                for o in (1, 2, 3, 13):
                    organ_px = torch.from_numpy(y == o)
                    if organ_px.sum() == 0:
                        continue
                    p = prob[..., o].view(-1, 1, 14, 14)
                    up = F.interpolate(p, size=(IMAGE, IMAGE), mode="bilinear", align_corners=False)[:, 0]
                    thr = torch.quantile(up.flatten(1), 0.8, dim=1).view(-1, 1, 1)
                    inside = ((up >= thr) & organ_px).sum().item() / organ_px.sum().item()
                    quality.setdefault(tag, {}).setdefault(CLASSES[o], {})[name] = round(inside, 4)
    report = {"command": "python weights/train/train_clip.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("shared", "xaiclip")),
              "seed": args.seed, "clip_steps": step, "coop_steps": cstep, "training_slices": len(X), "mr_training_slices": int(sum(modality)), "init": args.init, "coop_shots": len(shots),
              "localisation_top20pct_patches_heldout": quality, "history": history}
    with open(os.path.join(clip_dir, "training.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps({k: report[k] for k in ("clip_steps", "coop_steps", "localisation_top20pct_patches_heldout")}, indent=1))


if __name__ == "__main__":
    main()
