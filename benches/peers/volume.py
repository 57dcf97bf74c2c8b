"""3-D occlusion side by side, in one run on one machine: xaiclip's whole-volume occlusion (tile reuse;
whole volume and seg ROI) against Captum Occlusion and MONAI OcclusionSensitivity on the same 3-D
BasicUNet weights, volume, sliding-window inference (MONAI's, Gaussian blending), window, stride, zero
baseline and target (mean probability of the organ over M0, the model's own 3-D prediction).

The model is --weights (a 3-D BasicUNet folder: config.json + model.safetensors, such as the bundled
weights/unet3d, trained on 3 mm RAS volumes), or else a seeded, randomly initialised BasicUNet(spatial_dims=3)
written next to the results. xaiclip also runs in ROI mode (seg and clip: only the windows and tiles
touching the ROI) and RISE; ROI rows compare their map with xaiclip's whole-volume map inside the ROI.
  python benches/peers/volume.py --xaiclip target/release/xaiclip --image CT.nii.gz --weights weights/unet3d --out DIR
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
    ap.add_argument("--weights", help="a 3-D BasicUNet folder (config.json + model.safetensors); default: random")
    ap.add_argument("--masks", type=int, default=200, help="RISE masks of the xaiclip RISE rows (0: none)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(a.seed)
    patch = tuple(int(v) for v in a.patch.split(","))
    if a.weights:
        from safetensors.torch import load_file

        unet = a.weights
        saved = json.load(open(os.path.join(unet, "config.json")))
        layout = saved.get("layout")
        config = {k: v for k, v in saved.items() if k not in ("patch_size", "layout", "input_size")}
        model = BasicUNet(**config).eval()
        model.load_state_dict(load_file(os.path.join(unet, "model.safetensors")))
        patch = tuple(saved.get("patch_size", patch))
        features = ",".join(str(f) for f in config["features"])
        assert layout in (None, "RAS"), f"layout {layout}: this harness reorients to RAS only"
    else:
        config = dict(spatial_dims=3, in_channels=1, out_channels=2, features=[int(v) for v in a.features.split(",")],
                      act=["LeakyReLU", {"negative_slope": 0.1}], norm=["instance", {"affine": True}], bias=True,
                      dropout=0.0, upsample="deconv")
        model = BasicUNet(**config).eval()
        unet, layout, features = os.path.join(a.out, "unet3d"), None, a.features
        os.makedirs(unet, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(unet, "model.safetensors"))
        json.dump(dict(config, patch_size=list(patch)), open(os.path.join(unet, "config.json"), "w"), indent=1)

    def view(image):
        """The model's view of a volume as xaiclip gives it: the file's voxel axes, or RAS for a RAS model."""
        return nib.as_closest_canonical(image) if layout == "RAS" else image

    # The model's view, the abdomen window to [0, 1].
    data = np.asarray(view(nib.load(a.image)).dataobj, dtype=np.float32)
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

    def xaiclip(roi, method="occlusion"):
        out = os.path.join(a.out, f"xaiclip_{method}_{roi}")
        cmd = [a.xaiclip, "explain", "--image", a.image, "--unet", unet, "--slice", "all", "--method", method,
               "--roi", roi, "--occlusion-window", str(a.window), "--masks", str(a.masks), "--organ", "liver",
               "--roi-fallback", "clip+seg", "--out", out]
        subprocess.run(cmd, check=True)
        r = json.load(open(os.path.join(out, "report.json")))["result"]
        sal = np.asarray(view(nib.load(os.path.join(out, "saliency.nii.gz"))).dataobj, dtype=np.float64)
        roi_mask = sal != 0 if roi != "none" else None
        return r, sal, roi_mask

    ours, ours_map, _ = xaiclip("none")
    rows.append(("xaiclip occlusion (whole volume, tile reuse)", ours["seconds"], ours["tiles_evaluated"], ours_map, None))
    for roi in ("seg", "clip"):
        r, sal, inside = xaiclip(roi)
        fallback = f", fell back to {r['roi_fallback']}" if r.get("roi_fallback") else ""
        rows.append((f"xaiclip occlusion ({roi} ROI, {100 * r['roi_fraction']:.0f}% of the volume, covers "
                     f"{100 * r['roi_coverage']:.0f}% of M0{fallback})", r["seconds"], r["tiles_evaluated"], sal, inside))
    if a.masks:
        for roi in ("none", "seg"):
            r, sal, _ = xaiclip(roi, "rise")
            rows.append((f"xaiclip RISE, {r['samples']} masks ({roi} ROI, {100 * r['roi_fraction']:.0f}% of the volume)",
                         r["seconds"], r["tiles_evaluated"], None, None))
    w = a.window
    if "captum" in a.only:
        from captum.attr import Occlusion

        passes["tiles"] = 0
        t = time.perf_counter()
        sal = Occlusion(score).attribute(x, sliding_window_shapes=(1, w, w, w), strides=(1, w, w, w), baselines=0.0, perturbations_per_eval=1)
        rows.append(("Captum Occlusion", time.perf_counter() - t, passes["tiles"], sal[0, 0].numpy(), None))
    if "monai" in a.only:
        from monai.visualize import OcclusionSensitivity

        class AsClassifier(torch.nn.Module):
            def forward(self, images):
                return score(images)[:, None]

        passes["tiles"] = 0
        t = time.perf_counter()
        occ_map, _ = OcclusionSensitivity(AsClassifier(), mask_size=w, n_batch=1, verbose=False, mode=0.0, overlap=0.0, activate=False)(x)
        rows.append(("MONAI OcclusionSensitivity", time.perf_counter() - t, passes["tiles"], (base - occ_map.squeeze()).numpy(), None))

    weights = a.weights or f"random, seed {a.seed}"
    lines = [f"3-D occlusion, volume {tuple(x.shape[2:])} ({a.image}), model {weights} (features {features}, M0 "
             f"{int(count)} voxels), tiles {patch} at overlap 0.25 (Gaussian), window {w}^3 stride {w}, "
             f"{os.cpu_count()} threads",
             "", "| implementation | seconds | tiles through the model | max diff / max vs xaiclip whole volume | Pearson r |",
             "|---|---:|---:|---:|---:|"]
    for name, seconds, tiles, sal, inside in rows:
        if sal is not None and not name.startswith("xaiclip occlusion (whole"):
            sal = np.asarray(sal, np.float64)
            mask = inside if inside is not None else np.ones(sal.shape, bool)
            diff = np.abs(sal - ours_map)[mask].max() / max(np.abs(ours_map[mask]).max(), 1e-12)
            r = np.corrcoef(sal[mask], ours_map[mask])[0, 1]
            agree = f"{diff:.1e}{' (in the ROI)' if inside is not None else ''} | {r:.6f}"
        else:
            agree = "- | -"
        lines.append(f"| {name} | {seconds:.2f} | {tiles} | {agree} |")
    text = "\n".join(lines)
    print(text)
    open(os.path.join(a.out, "volume.md"), "w").write(text + "\n")


if __name__ == "__main__":
    main()
