"""A notebook-style session: load a CT with nibabel, explain the U-Net's liver with occlusion inside the
CLIP ROI, and save a figure of the slice, the ROI and the saliency with matplotlib.

    python examples/notebook.py CT.nii.gz LABELS.nii.gz figure.png [--label-ids totalseg]
"""

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

import xaiclip  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("image")
parser.add_argument("label")
parser.add_argument("figure")
parser.add_argument("--label-ids", default="flare22", help="flare22 or totalseg")
parser.add_argument("--organ", default="liver")
args = parser.parse_args()

# nibabel gives the volume indexed [i, j, k] with its affine: exactly what xaiclip takes.
img = nib.load(args.image)
ct = img.get_fdata(dtype=np.float32)
labels = np.asarray(nib.load(args.label).dataobj)

explainer = xaiclip.Explainer(device="cpu")
e = explainer.explain(ct, args.organ, "occlusion", roi="clip", label=labels, label_ids=args.label_ids,
                      affine=img.affine)
m = e.metrics
print(f"{e}: Dice {m['dice']:.3f}, ROI {100 * m['roi_fraction']:.1f}% of the slice, "
      f"covering {100 * m['roi_coverage']:.1f}% of the U-Net's prediction")

# Model-grid maps are oriented as a radiologist reads the slice, so they can be drawn as they are.
fig, axes = plt.subplots(1, 3, figsize=(13, 4.6))
axes[0].imshow(e.model_input, cmap="gray")
axes[0].contour(e.truth, levels=[0.5], colors="lime", linewidths=1)
axes[0].set_title(f"slice {e.slice}, ground-truth {e.organ} (green)")
axes[1].imshow(e.model_input, cmap="gray")
prob = axes[1].imshow(e.roi_probability, cmap="magma", alpha=0.55, vmin=0, vmax=1)
axes[1].contour(e.roi, levels=[0.5], colors="cyan", linewidths=1)
axes[1].set_title(f"CLIP '{e.organ}' probability, ROI (cyan) {100 * m['roi_fraction']:.0f}% of slice")
fig.colorbar(prob, ax=axes[1], fraction=0.046, label="CLIP organ probability")
axes[2].imshow(e.model_input, cmap="gray")
heat = axes[2].imshow(np.ma.masked_equal(e.saliency_model, 0), cmap="inferno", alpha=0.65)
axes[2].contour(e.truth, levels=[0.5], colors="lime", linewidths=0.8)
axes[2].set_title(f"occlusion in the ROI: Dice {m['dice']:.2f}, {e.forward_passes} passes")
fig.colorbar(heat, ax=axes[2], fraction=0.046, label="score drop (mean organ probability)")
for ax in axes:
    ax.set_axis_off()
fig.tight_layout()
fig.savefig(args.figure, dpi=100)
print(f"wrote {args.figure}")
