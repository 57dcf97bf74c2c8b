"""Train the bundled 3-D U-Net: MONAI BasicUNet (spatial_dims 3, features 8,8,16,32,64,8), 13 FLARE22
organs + background, on 3 mm volumes in RAS voxel order (what MONAI's Orientationd(axcodes="RAS") gives;
xaiclip feeds 3-D models the file's voxel order, so pass RAS volumes at about 3 mm).

Data: CT phantoms from `xaiclip phantom` (training seeds 1000..; 128 px over 384 mm and 53 slices over
160 mm: 3 mm) and the real DICOM series in ../shared/data/totalsegmentator resampled to 3 mm. The real
`ct_small.nii.gz` (3 mm, RAS) is held out whole: it is the volume the 3-D benchmarks explain. Validation:
phantom seeds 9001/9002 and ct_small, by MONAI's sliding_window_inference with the model's patch.
Loss: Dice + CE on random 64x64x32 patches, half of them centred on an organ voxel; intensity
augmentation. Writes weights/unet3d/{model.safetensors, config.json, training.json}.

    cargo build --release
    python weights/train/train_unet3d.py --minutes 25

Seeded; CPU only.
"""
import json
import math
import os
import tempfile
import time

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.networks.nets import BasicUNet
from safetensors.torch import save_file

import common

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
CONFIG = dict(spatial_dims=3, in_channels=1, out_channels=14, features=[8, 8, 16, 32, 64, 8],
              act=["LeakyReLU", {"negative_slope": 0.1}], norm=["instance", {"affine": True}],
              bias=True, dropout=0.0, upsample="deconv")
PATCH = (64, 64, 32)
TRACKED = [1, 3, 2, 13]  # liver, spleen, right kidney, left kidney
SPACING = 3.0


def ras(path):
    """The volume's array in RAS+ voxel order (nibabel's as_closest_canonical) and its spacing."""
    img = nib.as_closest_canonical(nib.load(path))
    return np.asarray(img.dataobj, dtype=np.float32), np.asarray(img.header.get_zooms()[:3], dtype=np.float64)


def resample(x, spacing, labels=False):
    """To SPACING mm per axis: trilinear for images, nearest for labels (align_corners False)."""
    size = [max(1, round(n * s / SPACING)) for n, s in zip(x.shape, spacing)]
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None]
    out = F.interpolate(t, size=size, mode="nearest-exact" if labels else "trilinear", **({} if labels else {"align_corners": False}))
    return out[0, 0].numpy()


def load(image, labels, totalseg):
    x, sx = ras(image)
    y, sy = ras(labels)
    assert x.shape == y.shape, f"{image}: image and labels differ in shape"
    y = np.rint(y).astype(np.int64)
    if totalseg:
        y = common.map_totalseg(y)
    if not np.allclose(sx, SPACING, atol=0.05):
        x, y = resample(x, sx), np.rint(resample(y.astype(np.float32), sy, labels=True)).astype(np.int64)
    return common.window(x).astype(np.float32), y


def pad_to(x, y, patch):
    pads = [max(0, p - n) for n, p in zip(x.shape, patch)]
    if any(pads):
        width = [(0, p) for p in pads]
        x, y = np.pad(x, width), np.pad(y, width)
    return x, y


def main():
    ap = common.parser(__doc__)
    ap.add_argument("--out", default=os.path.join(REPO, "weights", "unet3d"))
    ap.add_argument("--phantoms", type=int, default=12)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--minutes", type=float, default=25.0, help="training time budget")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--validate-every", type=int, default=150, help="steps between validations")
    args = ap.parse_args()
    rng, split = common.seeded(args.seed, REPO)
    torch.set_num_threads(os.cpu_count())

    with tempfile.TemporaryDirectory() as work:
        def phantom(seed):
            out = os.path.join(work, f"phantom{seed}")
            common.xaiclip(args.xaiclip, "phantom", "--seed", str(seed), "--out", out, "--size", "128", "--slices", "53")
            return load(os.path.join(out, "ct.nii.gz"), os.path.join(out, "labels.nii.gz"), False)

        train = [phantom(1000 + i) for i in range(args.phantoms)]
        val = {f"phantom {s}": phantom(s) for s in split["phantom_validation_seeds"]}
        dicom = os.path.join(work, "ct_dicom.nii.gz")
        common.xaiclip(args.xaiclip, "convert", "--image", os.path.join(args.shared, "ct_dicom"), "--out", dicom)
        train.append(load(dicom, os.path.join(args.shared, "ct_dicom_seg.nii.gz"), True))
        val["ct_small"] = load(os.path.join(args.shared, "ct_small.nii.gz"), os.path.join(args.shared, "ct_small_seg.nii.gz"), True)
    train = [pad_to(x, y, PATCH) for x, y in train]
    print("training volumes: " + ", ".join(str(x.shape) for x, _ in train), flush=True)

    model = BasicUNet(**CONFIG)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)

    def validate():
        model.eval()
        out = {}
        with torch.no_grad():
            for name, (x, y) in val.items():
                logits = sliding_window_inference(torch.from_numpy(x)[None, None], PATCH, 4, model, overlap=0.25,
                                                  mode="gaussian", sigma_scale=0.125)
                out[name] = common.dice_per_organ(logits.argmax(1)[0].numpy(), y, TRACKED)
        model.train()
        return out

    def sample():
        x, y = train[rng.randrange(len(train))]
        if rng.random() < 0.5:
            organ = np.argwhere(np.isin(y, TRACKED))
            centre = organ[rng.randrange(len(organ))] if len(organ) else np.array(y.shape) // 2
        else:
            centre = np.array([rng.randrange(n) for n in y.shape])
        lo = [int(min(max(c - p // 2, 0), n - p)) for c, p, n in zip(centre, PATCH, y.shape)]
        sl = tuple(slice(l, l + p) for l, p in zip(lo, PATCH))
        xp = x[sl] * rng.uniform(0.9, 1.1) + rng.uniform(-0.05, 0.05)
        xp = xp + np.random.randn(*xp.shape).astype(np.float32) * rng.uniform(0.0, 0.02)
        return xp.astype(np.float32), y[sl]

    start, budget = time.time(), args.minutes * 60
    step, best, best_state, history = 0, -1.0, None, []
    while time.time() - start < budget:
        lr = 3e-3 * 0.5 * (1 + math.cos(math.pi * min(1.0, (time.time() - start) / budget)))
        for g in opt.param_groups:
            g["lr"] = lr
        items = [sample() for _ in range(args.batch)]
        x = torch.from_numpy(np.stack([i[0] for i in items]))[:, None]
        y = torch.from_numpy(np.stack([i[1] for i in items]))[:, None]
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % args.validate_every == 0:
            scores = validate()
            phantom_mean = float(np.nanmean([d for n, v in scores.items() if n.startswith("phantom") for d in v.values()]))
            history.append({"step": step, "minutes": round((time.time() - start) / 60, 1), "loss": round(float(loss), 4),
                            "dice": {n: {common.ORGANS[o]: round(d, 3) for o, d in v.items()} for n, v in scores.items()}})
            print(json.dumps(history[-1]), flush=True)
            if phantom_mean > best:
                best = phantom_mean
                best_state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}

    if best_state is None:
        best_state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    scores = validate()
    os.makedirs(args.out, exist_ok=True)
    save_file(best_state, os.path.join(args.out, "model.safetensors"))
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump({**CONFIG, "patch_size": list(PATCH), "layout": "RAS", "modalities": ["ct"]}, f, indent=2)
    report = {
        "command": "python weights/train/train_unet3d.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k in ("minutes", "seed", "phantoms", "batch")),
        "seed": args.seed, "steps": step, "minutes": round((time.time() - start) / 60, 1),
        "input": "RAS voxel order, 3 mm, abdomen window [-160, 240] HU to [0, 1]",
        "training": {"phantom_seeds": [1000 + i for i in range(args.phantoms)], "real": ["ct_dicom (resampled to 3 mm)"]},
        "validation_dice": {n: {common.ORGANS[o]: (None if math.isnan(d) else round(d, 4)) for o, d in v.items()} for n, v in scores.items()},
        "validation": "phantom seeds " + ", ".join(str(s) for s in split["phantom_validation_seeds"]) + "; ct_small.nii.gz whole (never trained on)",
        "history": history,
    }
    with open(os.path.join(args.out, "training.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps({k: report[k] for k in ("steps", "validation_dice")}, indent=2))


if __name__ == "__main__":
    main()
