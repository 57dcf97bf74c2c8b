"""Train the bundled U-Net: MONAI BasicUNet (2-D), 13 FLARE22 organs + background.

Data: axial slices of the real CT in ../shared/data/totalsegmentator (labels mapped to FLARE22 ids) minus
the held-out block in weights/unet/split.json, plus CT phantoms from `xaiclip phantom` (training seeds
1000..) and MR phantoms of the same seeds in the three CHAOS sequences (`xaiclip phantom --mr`). One
network for both modalities; the modality is carried by the input convention: CT windowed to [-160, 240]
HU, MR normalised by the volume's 0.5th-99.5th percentiles (xaiclip --modality mr), both to [0, 1].
Augmentation: random rotation/scale/shift, intensity scale/shift/gamma, noise. Loss: Dice + CE.
Writes weights/unet/{model.safetensors, config.json, training.json}.

    cargo build --release
    python weights/train/train_unet.py --minutes 45
    python weights/train/train_unet.py --init weights/unet ...   # continue from trained weights

Seeded; CPU only (2 cores: about 45 minutes).
"""
import json
import math
import os
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from monai.networks.nets import BasicUNet
from safetensors.torch import load_file, save_file

import common

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
CONFIG = dict(spatial_dims=2, in_channels=1, out_channels=14, features=[16, 16, 32, 64, 128, 16],
              act=["LeakyReLU", {"negative_slope": 0.1}], norm=["instance", {"affine": True}],
              bias=True, dropout=0.0, upsample="deconv")
TRACKED = [1, 3, 2, 13]  # liver, spleen, right kidney, left kidney: the model card's bounds


def augment(x, y, rng):
    """Random affine (rotation +-12 deg, scale 0.85-1.15, shift +-8%) and intensity changes, on (B,1,H,W)."""
    b = x.shape[0]
    ang = torch.tensor([rng.uniform(-12, 12) for _ in range(b)]) * math.pi / 180
    sc = torch.tensor([rng.uniform(0.85, 1.15) for _ in range(b)])
    tx = torch.tensor([[rng.uniform(-0.08, 0.08), rng.uniform(-0.08, 0.08)] for _ in range(b)])
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = torch.cos(ang) / sc
    theta[:, 0, 1] = -torch.sin(ang) / sc
    theta[:, 1, 0] = torch.sin(ang) / sc
    theta[:, 1, 1] = torch.cos(ang) / sc
    theta[:, :, 2] = tx
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    y = F.grid_sample(y[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)[:, 0].long()
    gain = torch.tensor([rng.uniform(0.85, 1.15) for _ in range(b)]).view(b, 1, 1, 1)
    bias = torch.tensor([rng.uniform(-0.08, 0.08) for _ in range(b)]).view(b, 1, 1, 1)
    gamma = torch.tensor([rng.uniform(0.8, 1.25) for _ in range(b)]).view(b, 1, 1, 1)
    x = (x.clamp(0, 1) ** gamma) * gain + bias
    x = x + torch.randn_like(x) * rng.uniform(0.0, 0.03)
    return x, y


def predict_on_slice_grid(model, hu_slices, size, normalised=False):
    """xaiclip segment's path: window (unless `normalised`), resize to the model grid, softmax, bilinear
    back, argmax."""
    h, w = hu_slices.shape[1:]
    x = torch.from_numpy(common.resize_image(hu_slices if normalised else common.window(hu_slices), size))[:, None]
    with torch.no_grad():
        probs = torch.softmax(model(x), dim=1)
        probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
    return probs.argmax(1).numpy()


def main():
    ap = common.parser(__doc__)
    ap.add_argument("--out", default=os.path.join(REPO, "weights", "unet"))
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--crop", type=int, default=192, help="training crop (the net is fully convolutional)")
    ap.add_argument("--phantoms", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--minutes", type=float, default=45.0, help="training time budget")
    ap.add_argument("--real-weight", type=float, default=0.5, help="fraction of each batch from real CT")
    ap.add_argument("--mr-weight", type=float, default=0.0, help="fraction of each batch from MR phantoms")
    ap.add_argument("--mr-phantoms", type=int, default=0, help="MR phantom seeds (1000..), each in the three sequences")
    ap.add_argument("--init", default=None, help="a U-Net folder to continue from (default: from scratch)")
    ap.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (cosine to 0)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--validate-every", type=int, default=100, help="steps between validations")
    args = ap.parse_args()

    rng, split = common.seeded(args.seed, REPO)

    with tempfile.TemporaryDirectory() as work:
        real = common.load_real_cases(args.shared, args.xaiclip, work)
        phantoms = [common.load_phantom(args.xaiclip, work, 1000 + i, args.size, 24) for i in range(args.phantoms)]
        val_phantoms = [common.load_phantom(args.xaiclip, work, s, args.size, 24) for s in split["phantom_validation_seeds"]]
        mr = [common.load_mr_phantom(args.xaiclip, work, 1000 + i, args.size, 20, q) for i in range(args.mr_phantoms) for q in common.SEQUENCES]
        val_mr = {f"{s} {q}": common.load_mr_phantom(args.xaiclip, work, s, args.size, 20, q) for s in split["phantom_validation_seeds"] for q in common.SEQUENCES}

    def prepare(hu, labels):
        return common.resize_image(common.window(hu), args.size).astype(np.float32), common.resize_labels(labels, args.size)

    real_train, real_val, split_report = [], {}, {}
    for name, (hu, labels) in real.items():
        held = set(split["cases"][name]["validation"]) | set(split["cases"][name]["guard"])
        train_idx = [k for k in range(hu.shape[0]) if k not in held]
        x, y = prepare(hu[train_idx], labels[train_idx])
        real_train += list(zip(x, y))
        val_idx = split["cases"][name]["validation"]
        real_val[name] = (hu[val_idx], labels[val_idx])
        split_report[name] = {"train": train_idx, "validation": val_idx, "guard": split["cases"][name]["guard"]}
    phantom_train, mr_train = [], []
    for hu, labels in phantoms:
        x, y = prepare(hu, labels)
        phantom_train += list(zip(x, y))
    for x, y in mr:
        mr_train += list(zip(common.resize_image(x, args.size).astype(np.float32), common.resize_labels(y, args.size)))
    print(f"training slices: {len(real_train)} real, {len(phantom_train)} phantom; held out: "
          + ", ".join(f"{n} {v['validation']}" for n, v in split_report.items()), flush=True)

    model = BasicUNet(**CONFIG)
    if args.init:
        model.load_state_dict(load_file(os.path.join(args.init, "model.safetensors")))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, lambda_ce=1.0, lambda_dice=1.0)

    def validate():
        model.eval()
        preds, truths = [], []
        for name, (hu, labels) in real_val.items():
            preds.append(predict_on_slice_grid(model, hu, args.size).ravel())
            truths.append(labels.ravel())
        real_dice = common.dice_per_organ(np.concatenate(preds), np.concatenate(truths), range(1, 14))
        ph_pred = np.concatenate([predict_on_slice_grid(model, hu, args.size).ravel() for hu, _ in val_phantoms])
        ph_true = np.concatenate([labels.ravel() for _, labels in val_phantoms])
        ph_dice = common.dice_per_organ(ph_pred, ph_true, range(1, 14))
        mr_dice = {}
        if args.mr_phantoms:
            mr_pred = np.concatenate([predict_on_slice_grid(model, x, args.size, normalised=True).ravel() for x, _ in val_mr.values()])
            mr_true = np.concatenate([y.ravel() for _, y in val_mr.values()])
            mr_dice = common.dice_per_organ(mr_pred, mr_true, range(1, 14))
        model.train()
        return real_dice, ph_dice, mr_dice

    start = time.time()
    budget = args.minutes * 60
    step, best, best_state, history = 0, -1.0, None, []
    n_real = max(1, round(args.batch * args.real_weight))
    n_mr = round(args.batch * args.mr_weight) if args.mr_phantoms else 0
    while time.time() - start < budget:
        lr = args.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (time.time() - start) / budget)))
        for g in opt.param_groups:
            g["lr"] = lr
        items = ([rng.choice(real_train) for _ in range(n_real)] + [rng.choice(mr_train) for _ in range(n_mr)]
                 + [rng.choice(phantom_train) for _ in range(args.batch - n_real - n_mr)])
        x = torch.from_numpy(np.stack([i[0] for i in items]))[:, None]
        y = torch.from_numpy(np.stack([i[1] for i in items]))
        x, y = augment(x, y, rng)
        c = args.crop
        oy, ox = rng.randint(0, args.size - c), rng.randint(0, args.size - c)
        x, y = x[:, :, oy:oy + c, ox:ox + c], y[:, oy:oy + c, ox:ox + c]
        loss = loss_fn(model(x), y[:, None])
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % args.validate_every == 0:
            real_dice, ph_dice, mr_dice = validate()
            # Real CT and (when trained on) MR phantoms count alike in choosing the checkpoint.
            score = float(np.mean([real_dice[o] for o in TRACKED] + [mr_dice[o] for o in TRACKED if mr_dice]))
            history.append({"step": step, "minutes": round((time.time() - start) / 60, 1), "loss": float(loss),
                            "real_dice": {common.ORGANS[o]: round(real_dice[o], 4) for o in TRACKED},
                            "phantom_liver_dice": round(ph_dice[1], 4),
                            **({"mr_phantom_dice": {common.ORGANS[o]: round(mr_dice[o], 4) for o in TRACKED}} if mr_dice else {})})
            print(json.dumps(history[-1]), flush=True)
            if score > best:
                best = score
                best_state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}

    if best_state is None:  # budget shorter than one validation interval
        best_state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    real_dice, ph_dice, mr_dice = validate()
    os.makedirs(args.out, exist_ok=True)
    save_file(best_state, os.path.join(args.out, "model.safetensors"))
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump({**CONFIG, "input_size": args.size, "modalities": ["ct", "mr"] if args.mr_phantoms else ["ct"]}, f, indent=2)
    report = {
        "command": "python weights/train/train_unet.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k in ("minutes", "seed", "phantoms", "batch", "crop", "size", "mr_phantoms", "mr_weight", "real_weight", "init", "lr") and v is not None),
        "seed": args.seed, "steps": step, "minutes": round((time.time() - start) / 60, 1),
        "split": split_report, "phantom_training_seeds": [1000 + i for i in range(args.phantoms)],
        "phantom_validation_seeds": split["phantom_validation_seeds"],
        "validation_dice_real": {common.ORGANS[o]: (None if math.isnan(d) else round(d, 4)) for o, d in real_dice.items()},
        "validation_dice_phantom": {common.ORGANS[o]: (None if math.isnan(d) else round(d, 4)) for o, d in ph_dice.items()},
        "mr_phantom_training_seeds": [1000 + i for i in range(args.mr_phantoms)],
        "validation_dice_mr_phantom": {common.ORGANS[o]: (None if math.isnan(d) else round(d, 4)) for o, d in mr_dice.items()},
        "history": history,
    }
    with open(os.path.join(args.out, "training.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps({k: report[k] for k in ("steps", "validation_dice_real", "validation_dice_phantom", "validation_dice_mr_phantom")}, indent=2))


if __name__ == "__main__":
    main()
