"""Data preparation shared by the training scripts: the same slice layout, windowing and resampling as
xaiclip's Rust preprocessing (src/preprocess.rs), so that a model trained here sees at inference exactly
what it saw in training."""
import argparse
import json
import os
import subprocess

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

# TotalSegmentator "total" id -> FLARE22 id (../shared/data/totalsegmentator/README.md).
TOTALSEG_TO_FLARE22 = {5: 1, 2: 2, 1: 3, 7: 4, 52: 5, 63: 6, 8: 7, 9: 8, 4: 9, 15: 10, 6: 11, 19: 12, 3: 13}
ORGANS = ["background", "liver", "right kidney", "spleen", "pancreas", "aorta", "inferior vena cava",
          "right adrenal gland", "left adrenal gland", "gallbladder", "esophagus", "stomach", "duodenum",
          "left kidney"]
WINDOW = (-160.0, 240.0)
REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def parser(doc):
    """A script's argument parser with the options every training script has: the shared data and the
    xaiclip binary that makes phantoms and converts DICOM."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=os.path.join(REPO, "..", "shared", "data", "totalsegmentator"))
    ap.add_argument("--xaiclip", default=os.path.join(REPO, "target", "release", "xaiclip"))
    return ap


def axial_slices(path):
    """(slices, H, W) in xaiclip's radiological layout: row 0 anterior, column 0 patient right.

    as_closest_canonical gives RAS+ axes; flipping x and y and transposing puts anterior at the top and
    patient right on the left, which is what AxialLayout produces from any orientation."""
    img = nib.as_closest_canonical(nib.load(path))
    arr = np.asarray(img.dataobj, dtype=np.float32)
    return np.ascontiguousarray(arr[::-1, ::-1, :].transpose(2, 1, 0)), img.affine


def mr_normalise(slices):
    """xaiclip's MR rule (Intensity::MrPercentile): the volume's 0.5th and 99.5th percentiles (sorted
    values at index round((n - 1) q), halves away from zero) become 0 and 1, clamped outside."""
    flat = np.sort(slices.ravel())
    at = lambda q: flat[int(np.floor((flat.size - 1) * q + 0.5))]
    lo, hi = at(0.005), at(0.995)
    hi = hi if hi > lo else lo + 1.0
    return np.clip((slices - lo) / (hi - lo), 0.0, 1.0)


SEQUENCES = ["t1-in-phase", "t1-opposed-phase", "t2-spir"]


def load_mr_phantom(binary, workdir, seed, size, slices, sequence):
    """An MR phantom (`xaiclip phantom --mr SEQUENCE`) normalised as xaiclip normalises MR, and its labels."""
    out = os.path.join(workdir, f"mr{seed}")
    xaiclip(binary, "phantom", "--seed", str(seed), "--out", out, "--size", str(size), "--slices", str(slices), "--mr", sequence)
    x, _ = axial_slices(os.path.join(out, f"mr_{sequence.replace('-', '_')}.nii.gz"))
    y, _ = axial_slices(os.path.join(out, "labels.nii.gz"))
    return mr_normalise(x).astype(np.float32), np.rint(y).astype(np.int64)


def window(slices):
    lo, hi = WINDOW
    return np.clip((slices - lo) / (hi - lo), 0.0, 1.0)


def resize_image(x, size):
    """Bilinear, pixel-centre aligned: xaiclip's resize_bilinear."""
    t = torch.from_numpy(np.ascontiguousarray(x))[:, None]
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[:, 0].numpy()


def resize_labels(y, size):
    """Nearest with pixel-centre alignment: xaiclip's resize_nearest."""
    t = torch.from_numpy(np.ascontiguousarray(y.astype(np.float32)))[:, None]
    return F.interpolate(t, size=(size, size), mode="nearest-exact")[:, 0].numpy().astype(np.int64)


def map_totalseg(labels):
    out = np.zeros(labels.shape, dtype=np.int64)
    for ts, flare in TOTALSEG_TO_FLARE22.items():
        out[labels == ts] = flare
    return out


def xaiclip(binary, *args):
    subprocess.run([binary, *args], check=True)


def load_real_cases(shared, binary, workdir):
    """The two real CT volumes with FLARE22 labels: {name: (hu slices, label slices)}."""
    dicom_nii = os.path.join(workdir, "ct_dicom.nii.gz")
    xaiclip(binary, "convert", "--image", os.path.join(shared, "ct_dicom"), "--out", dicom_nii)
    cases = {}
    for name, image, labels in [("ct_small.nii.gz", os.path.join(shared, "ct_small.nii.gz"), os.path.join(shared, "ct_small_seg.nii.gz")),
                                ("ct_dicom", dicom_nii, os.path.join(shared, "ct_dicom_seg.nii.gz"))]:
        x, ax = axial_slices(image)
        y, ay = axial_slices(labels)
        assert x.shape == y.shape and np.allclose(ax, ay, atol=1e-3), f"{name}: image and label grids differ"
        cases[name] = (x, map_totalseg(np.rint(y).astype(np.int64)))
    return cases


def load_phantom(binary, workdir, seed, size, slices):
    out = os.path.join(workdir, f"phantom{seed}")
    xaiclip(binary, "phantom", "--seed", str(seed), "--out", out, "--size", str(size), "--slices", str(slices))
    x, _ = axial_slices(os.path.join(out, "ct.nii.gz"))
    y, _ = axial_slices(os.path.join(out, "labels.nii.gz"))
    return x, np.rint(y).astype(np.int64)


def dice_per_organ(pred, truth, organs):
    """Dice of each organ id in `organs` (NaN where neither has it)."""
    out = {}
    for o in organs:
        p, t = pred == o, truth == o
        denom = p.sum() + t.sum()
        out[o] = float(2 * (p & t).sum() / denom) if denom > 0 else float("nan")
    return out


def load_split(path):
    with open(path) as f:
        return json.load(f)


def seeded(seed, repo):
    """Seeds every generator the scripts use; returns (python rng, the held-out split)."""
    import random
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return random.Random(seed), load_split(os.path.join(repo, "weights", "unet", "split.json"))
