"""3-D occlusion side by side, in one run on one machine: xaiclip's whole-volume occlusion (tile reuse;
whole volume and seg ROI) against Captum Occlusion and MONAI OcclusionSensitivity on the same 3-D
BasicUNet weights, volume, sliding-window inference (MONAI's, Gaussian blending), window, stride, zero
baseline and target (mean probability of the organ over M0, the model's own 3-D prediction).

The model is a seeded, randomly initialised BasicUNet(spatial_dims=3) written next to the results: the
comparison is of speed and of the maps' agreement on the same quantity, not of a trained model.
  python benches/peers/volume.py --xaiclip target/release/xaiclip --image CT.nii.gz --out DIR
"""
import argparse
import json
import os
import subprocess
import time
import warnings

import nibabel as nib
import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.networks.nets import BasicUNet
from safetensors.torch import save_file


def main():
    warnings.filterwarnings("ignore", category=UserWarning, module="monai")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--xaiclip", required=True)
    ap.add_argument("--image", required=True, help="a CT volume (NIfTI)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--patch", default="64,64,32")
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--features", default="8,8,16,32,64,8")
    ap.add_argument("--batch", type=int, default=4, help="tiles per forward (sw_batch_size) in every engine")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="captum,monai", help="peers to run (comma list)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(a.seed)
    patch = tuple(int(v) for v in a.patch.split(","))
    config = dict(spatial_dims=3, in_channels=1, out_channels=2, features=[int(v) for v in a.features.split(",")],
                  act=["LeakyReLU", {"negative_slope": 0.1}], norm=["instance", {"affine": True}], bias=True,
                  dropout=0.0, upsample="deconv")
    model = BasicUNet(**config).eval()
    unet = os.path.join(a.out, "unet3d")
    os.makedirs(unet, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(unet, "model.safetensors"))
    json.dump(dict(config, patch_size=list(patch)), open(os.path.join(unet, "config.json"), "w"), indent=1)

    # The model's view, as xaiclip gives it: the file's voxel axes, the abdomen window to [0, 1].
    data = np.asarray(nib.load(a.image).dataobj, dtype=np.float32)
    x = torch.from_numpy(np.clip((data + 160.0) / 400.0, 0.0, 1.0))[None, None].contiguous()
    passes = {"tiles": 0}

    def predict(t):
        passes["tiles"] += t.shape[0]
        return model(t)

    def logits(v):
        with torch.inference_mode():
            return sliding_window_inference(v, patch, a.batch, predict, overlap=0.25, mode="gaussian", sigma_scale=0.125)

    m0 = logits(x).argmax(1)[0] == 1
    count = m0.sum()
    print(f"volume {tuple(x.shape[2:])}, M0 {int(count)} voxels", flush=True)

    def score(batch):
        return torch.stack([(torch.softmax(logits(v[None]), 1)[0, 1] * m0).sum() / count for v in batch])

    base = score(x)
    rows = []

    def xaiclip(roi):
        out = os.path.join(a.out, f"xaiclip_{roi}")
        cmd = [a.xaiclip, "explain", "--image", a.image, "--unet", unet, "--slice", "all", "--method", "occlusion",
               "--roi", roi, "--occlusion-window", str(a.window), "--organ", "liver", "--out", out]
        subprocess.run(cmd, check=True)
        r = json.load(open(os.path.join(out, "report.json")))["result"]
        sal = np.asarray(nib.load(os.path.join(out, "saliency.nii.gz")).dataobj, dtype=np.float64)
        return r, sal

    ours, ours_map = xaiclip("none")
    rows.append(("xaiclip (whole volume, tile reuse)", ours["seconds"], ours["tiles_evaluated"], ours_map))
    seg, seg_map = xaiclip("seg")
    rows.append((f"xaiclip (seg ROI, {100 * seg['roi_fraction']:.0f}% of the volume)", seg["seconds"], seg["tiles_evaluated"], None))
    w = a.window
    if "captum" in a.only:
        from captum.attr import Occlusion

        passes["tiles"] = 0
        t = time.perf_counter()
        sal = Occlusion(score).attribute(x, sliding_window_shapes=(1, w, w, w), strides=(1, w, w, w), baselines=0.0, perturbations_per_eval=1)
        rows.append(("Captum Occlusion", time.perf_counter() - t, passes["tiles"], sal[0, 0].numpy()))
    if "monai" in a.only:
        from monai.visualize import OcclusionSensitivity

        class AsClassifier(torch.nn.Module):
            def forward(self, images):
                return score(images)[:, None]

        passes["tiles"] = 0
        t = time.perf_counter()
        occ_map, _ = OcclusionSensitivity(AsClassifier(), mask_size=w, n_batch=1, verbose=False, mode=0.0, overlap=0.0, activate=False)(x)
        rows.append(("MONAI OcclusionSensitivity", time.perf_counter() - t, passes["tiles"], (base - occ_map.squeeze()).numpy()))

    lines = [f"3-D occlusion, volume {tuple(x.shape[2:])} ({a.image}), tiles {patch} at overlap 0.25 (Gaussian), "
             f"window {w}^3 stride {w}, features {a.features}, {os.cpu_count()} threads",
             "", "| implementation | seconds | tiles through the model | max diff / max vs xaiclip | Pearson r |", "|---|---:|---:|---:|---:|"]
    for name, seconds, tiles, sal in rows:
        if sal is not None and name.startswith(("Captum", "MONAI")):
            sal = np.asarray(sal, np.float64)
            diff = np.abs(sal - ours_map).max() / max(np.abs(ours_map).max(), 1e-12)
            r = np.corrcoef(sal.ravel(), ours_map.ravel())[0, 1]
            agree = f"{diff:.1e} | {r:.6f}"
        else:
            agree = "- | -"
        lines.append(f"| {name} | {seconds:.2f} | {tiles} | {agree} |")
    text = "\n".join(lines)
    print(text)
    open(os.path.join(a.out, "volume.md"), "w").write(text + "\n")


if __name__ == "__main__":
    main()
