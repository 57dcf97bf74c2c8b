"""xaiclip against its peers on the same U-Net weights, slice, organ, score, baseline and settings.

xaiclip runs first (`xaiclip bench --demo --export`): its timings per method in full-image and CLIP-ROI
mode, and the arrays of each run on the model grid (input, baseline, ROI, saliency, superpixels). Then, in
PyTorch with the same weights loaded into MONAI's BasicUNet:

- Captum Occlusion and MONAI OcclusionSensitivity (same window, stride and zero baseline);
- the RISE algorithm (score-weighted mask average) over the same masks, regenerated from xaiclip's seed
  with a NumPy port of its Philox4x32-10 stream and mask construction;
- Captum Lime and KernelShap and the `lime` package over xaiclip's superpixels.

--size runs both sides at another model input side (xaiclip resizes the slice to it; the peers take
xaiclip's exported input, so both see the same image): issue #21's 128², 256² and 512². --precision tf32
runs xaiclip's convolutions on Winograd F(4x4, 3x3) in f32 (the peers stay f32; the maps are compared as
always).

The score is xaiclip's default: mean softmax probability of the organ over M0, the unperturbed predicted
organ mask. Occlusion and RISE compute the same quantity, so their maps must agree to 1e-4 relative to
the map's largest magnitude. The timed LIME/SHAP peers draw their own random coalitions, so only their
correlation is reported; each is then run again on xaiclip's coalitions (exported with the arrays):
lime_image and Captum KernelShap with their sampler replaced by a replay and everything else (images,
distances, kernel, feature selection, regression) their own, which must agree to the same 1e-4 (Captum
KernelShap once with its float32 fit and once fitting in float64; see Float64Regression). Seconds are
medians of --repeat rounds, each round xaiclip (`bench --methods M --warmup 1 --repeat R`, its median)
and then each peer once, so that every implementation is timed in the same minutes; torch uses every core
(as xaiclip does). The peers run in one Python session that has already run the model; xaiclip's untimed
first run per row does the same for its process (at 128² a cold run of occlusion faults in the
activations' fresh memory, which took as long as the run itself on a Zen 4 VM).

With --model (an nnU-Net v2 result folder) and --image/--label, both sides run that model instead: PyTorch
builds it with nnunetv2's get_network_from_plans from fold_0's checkpoint and feeds it the same windowed
model-grid slice mapped to CTNormalization (window [p0.5, p99.5] of the plans' foreground, then z-score),
exactly as xaiclip does, so the perturbations (zero = the window's low end) are the same on both sides.
"""

import argparse
import json
import warnings
import os
import statistics
import subprocess
import time

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

M0_, M1_, W0_, W1_ = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85
MASK32 = np.uint64(0xFFFFFFFF)


def philox_words(seed, stream, n_words):
    """Words 0..n_words-1 of Philox4x32-10 stream `stream` under `seed` (as xaiclip's rng.rs)."""
    blocks = np.arange((n_words + 3) // 4, dtype=np.uint64)
    c0, c1 = blocks & MASK32, blocks >> np.uint64(32)
    c2 = np.full_like(blocks, stream & 0xFFFFFFFF)
    c3 = np.full_like(blocks, stream >> 32)
    k0, k1 = seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF
    for r in range(10):
        if r > 0:
            k0, k1 = (k0 + W0_) & 0xFFFFFFFF, (k1 + W1_) & 0xFFFFFFFF
        p0 = np.uint64(M0_) * c0
        p1 = np.uint64(M1_) * c2
        c0, c1, c2, c3 = ((p1 >> np.uint64(32)) ^ c1 ^ np.uint64(k0)), p1 & MASK32, ((p0 >> np.uint64(32)) ^ c3 ^ np.uint64(k1)), p0 & MASK32
    return np.stack([c0, c1, c2, c3], axis=1).reshape(-1)[:n_words]


def uniforms(seed, stream, n):
    return ((philox_words(seed, stream, n) >> np.uint64(8)).astype(np.float32) * np.float32(1.0 / 16777216.0)).astype(np.float32)


def rise_mask(seed, i, grid, p1, size):
    """xaiclip's RISE mask i (src/explain/rise.rs), in float32 step for step."""
    f32 = np.float32
    u = uniforms(seed, i, grid * grid + 2)
    g = (u[: grid * grid] < f32(p1)).astype(np.float32).reshape(grid, grid)
    cell = -(-size // grid)
    up = (grid + 1) * cell
    shift_y = int(u[grid * grid] * f32(cell))
    shift_x = int(u[grid * grid + 1] * f32(cell))

    def taps(shift):
        v = np.arange(size, dtype=np.float32) + f32(shift)
        pos = np.clip((v + f32(0.5)) * f32(grid) / f32(up) - f32(0.5), f32(0), f32(grid - 1)).astype(np.float32)
        g0 = np.floor(pos).astype(np.int64)
        return g0, np.minimum(g0 + 1, grid - 1), (pos - g0.astype(np.float32)).astype(np.float32)

    y0, y1, fy = taps(shift_y)
    x0, x1, fx = taps(shift_x)
    one = f32(1)
    top = g[y0][:, x0] * (one - fx) + g[y0][:, x1] * fx
    bottom = g[y1][:, x0] * (one - fx) + g[y1][:, x1] * fx
    return (top * (one - fy)[:, None] + bottom * fy[:, None]).astype(np.float32)


class NnUNetOnWindow(torch.nn.Module):
    """An nnU-Net 2d network fed a windowed [0, 1] slice: v -> (low + v (high - low) - mean) / std."""

    def __init__(self, folder):
        super().__init__()
        from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

        plans = json.load(open(os.path.join(folder, "plans.json")))
        dataset = json.load(open(os.path.join(folder, "dataset.json")))
        arch = plans["configurations"]["2d"]["architecture"]
        self.net = get_network_from_plans(
            arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"], 1, len(dataset["labels"]), deep_supervision=False
        )
        self.net.load_state_dict(torch.load(os.path.join(folder, "fold_0", "checkpoint_final.pth"), weights_only=False)["network_weights"])
        self.net.eval()
        fg = plans["foreground_intensity_properties_per_channel"]["0"]
        low, high, std = fg["percentile_00_5"], fg["percentile_99_5"], max(fg["std"], 1e-8)
        self.scale, self.shift = (high - low) / std, (low - fg["mean"]) / std

    def forward(self, x):
        return self.net(x * self.scale + self.shift)


def load_unet(weights):
    if os.path.isfile(os.path.join(weights, "plans.json")):
        return NnUNetOnWindow(weights).eval()
    from monai.networks.nets import BasicUNet

    import inspect

    # config.json also holds xaiclip's own keys (input_size, modalities, ...): keep BasicUNet's arguments.
    params = inspect.signature(BasicUNet).parameters
    cfg = {k: v for k, v in json.load(open(os.path.join(weights, "config.json"))).items() if k in params}
    for k in ("act", "norm"):
        if isinstance(cfg.get(k), list):
            cfg[k] = tuple(cfg[k])
    model = BasicUNet(**cfg).eval()
    model.load_state_dict(load_file(os.path.join(weights, "model.safetensors")))
    return model


class Score:
    """Mean softmax probability of `cls` over M0, per image; counts forward passes."""

    def __init__(self, model, image, cls):
        self.model, self.cls, self.passes = model, cls, 0
        with torch.inference_mode():
            self.m0 = model(image).argmax(1)[0] == cls
        self.count = self.m0.sum()

    def __call__(self, x):
        self.passes += x.shape[0]
        with torch.inference_mode():
            p = torch.softmax(self.model(x), 1)[:, self.cls]
        return (p * self.m0).sum((1, 2)) / self.count


def arrays(path):
    with safe_open(path, "np") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def agreement(ours, theirs):
    ours, theirs = np.asarray(ours, np.float64).ravel(), np.asarray(theirs, np.float64).ravel()
    scale = max(np.abs(ours).max(), 1e-12)
    r = np.corrcoef(ours, theirs)[0, 1] if ours.std() > 0 and theirs.std() > 0 else float("nan")
    return float(np.abs(ours - theirs).max() / scale), float(r)


def main():
    # MONAI 1.6 indexes tensors with lists, which torch 2.15 warns about on every window.
    warnings.filterwarnings("ignore", category=UserWarning, module="monai")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--xaiclip", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rise-masks", type=int, default=500)
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="occlusion,rise,lime,kernelshap", help="peer methods to run (comma list)")
    ap.add_argument("--image", help="a case to explain instead of the bundled phantom (needs --label)")
    ap.add_argument("--label")
    ap.add_argument("--label-ids", default="flare22")
    ap.add_argument("--organ", default="liver")
    ap.add_argument("--size", type=int, help="model input side (both sides run the slice resized to it); default: the model's own")
    ap.add_argument("--roi-fallback", help="xaiclip's ROI mode where the CLIP ROI covers too little of the organ (e.g. clip+seg)")
    ap.add_argument("--precision", default="f32", help="xaiclip's --precision (the peers run f32); tf32 on a CPU is f32 on Winograd F(4x4, 3x3)")
    a = ap.parse_args()
    case = ["--demo"] if a.image is None else [
        "--image", a.image, "--label", a.label, "--label-ids", a.label_ids, "--slice", "organ-center", "--organ", a.organ, "--unet", a.weights]
    os.makedirs(a.out, exist_ok=True)
    torch.set_num_threads(os.cpu_count())
    export = os.path.join(a.out, "arrays")
    def xaiclip_bench(methods, record, *extra, quiet=True):
        subprocess.run(
            [a.xaiclip, "bench", *case, "--roi", "clip", "--methods", methods, "--warmup", "1", "--repeat", str(a.repeat), "--masks", str(a.rise_masks),
             "--samples", str(a.samples), "--batch", str(a.batch), "--seed", str(a.seed), "--faithfulness-steps", "0",
             "--json", os.path.join(a.out, record), "--device", "cpu", "--precision", a.precision, *extra,
             *(["--size", str(a.size)] if a.size else []), *(["--roi-fallback", a.roi_fallback] if a.roi_fallback else [])],
            check=True, stdout=subprocess.DEVNULL if quiet else None,
        )
        return json.load(open(os.path.join(a.out, record)))

    bench = xaiclip_bench("occlusion,rise,lime,kernelshap", "xaiclip.json", "--export", export, quiet=False)
    ours = {(r["method"], r["roi"]): r for r in bench["rows"]}
    settings = bench["context"]["settings"]
    model = load_unet(a.weights)
    full = {m: arrays(os.path.join(export, f"{m}-none.safetensors")) for m in ("occlusion", "rise", "lime", "kernelshap")}
    x = torch.from_numpy(full["occlusion"][0]["input"]).reshape(1, 1, *full["occlusion"][0]["input"].shape)
    cls = int(full["occlusion"][1]["class"])
    size = x.shape[-1]
    rows = []

    def add(method, impl, seconds, passes, saliency):
        d, r = agreement(full[method][0]["saliency"], saliency) if saliency is not None else (float("nan"), float("nan"))
        rows.append(dict(method=method, implementation=impl, seconds=seconds, forward_passes=passes, max_rel_diff=d, pearson_r=r))
        print(f"{method:10} {impl:28} {seconds:8.2f}s {passes:6} passes  max|diff|/max {d:.2e}  r {r:.5f}", flush=True)

    for m in ("occlusion", "rise", "lime", "kernelshap"):
        for roi in ("none", "clip"):
            o = ours[(m, roi)]
            add(m, f"xaiclip ({'full image' if roi == 'none' else 'CLIP ROI'})", o["seconds"], o["forward_passes"], full[m][0]["saliency"] if roi == "none" else None)

    def side_by_side(method, peers):
        """--repeat rounds of: xaiclip (`bench --methods method --warmup 1 --repeat R`, its median), then each peer
        once. This machine's speed drifts by tens of percent within minutes, and a run of xaiclip at
        128² lasts a fraction of a second, so each implementation's median comes from runs interleaved
        with the others' rather than from a block of its own. Returns each peer's (median seconds,
        forward passes, result of its last run)."""
        ours, times, passes, result = [], {name: [] for name, _ in peers}, {}, {}
        for _ in range(a.repeat):
            ours.append({r["roi"]: r["seconds"] for r in xaiclip_bench(method, f"xaiclip-{method}.json")["rows"]})
            for name, fn in peers:
                t = time.perf_counter()
                result[name] = fn()
                times[name].append(time.perf_counter() - t)
                passes[name] = score.passes
        for r in rows:
            if r["method"] == method and r["implementation"].startswith("xaiclip"):
                r["seconds"] = statistics.median(o["none" if "full image" in r["implementation"] else "clip"] for o in ours)
                print(f"{method:10} {r['implementation']:28} {r['seconds']:8.2f}s (timed again beside the peers)", flush=True)
        return {name: (statistics.median(times[name]), passes[name], result[name]) for name, _ in peers}

    # Occlusion: window and stride from xaiclip's settings.
    window, stride = settings["occlusion"]["window"], settings["occlusion"]["stride"]
    from captum.attr import Occlusion, Lime, KernelShap
    from captum._utils.models.linear_model import SkLearnLinearRegression
    from torch.utils.data import DataLoader, TensorDataset

    score = Score(model, x, cls)
    base = score(x)
    score.passes = 0

    def captum_occlusion():
        score.passes = 0
        return Occlusion(score).attribute(x, sliding_window_shapes=(1, window, window), strides=(1, stride, stride), baselines=0.0, perturbations_per_eval=a.batch)

    want = a.only.split(",")
    from monai.visualize import OcclusionSensitivity

    class AsClassifier(torch.nn.Module):
        def forward(self, images):
            return score(images)[:, None]

    def monai_occlusion():
        score.passes = 0
        occ = OcclusionSensitivity(AsClassifier(), mask_size=window, n_batch=a.batch, verbose=False, mode=0.0, overlap=1 - stride / window, activate=False)
        occ_map, _ = occ(x)
        occ_map = occ_map.squeeze()
        assert occ_map.shape == (size, size), occ_map.shape
        return base - occ_map

    if "occlusion" in want:
        got = side_by_side("occlusion", [("Captum Occlusion", captum_occlusion), ("MONAI OcclusionSensitivity", monai_occlusion)])
        t, passes, sal = got["Captum Occlusion"]
        add("occlusion", "Captum Occlusion", t, passes + 1, sal[0, 0].numpy())
        t, passes, sal = got["MONAI OcclusionSensitivity"]
        add("occlusion", "MONAI OcclusionSensitivity", t, passes + 1, sal.numpy())

    grid, p1 = settings["rise"]["grid"], settings["rise"]["p1"]
    n_masks = int(full["rise"][1]["samples"])
    baseline = torch.from_numpy(full["rise"][0]["baseline"]).reshape(1, 1, size, size)

    def rise():
        score.passes = 0
        total = torch.zeros(size, size, dtype=torch.float64)
        for start in range(0, n_masks, a.batch):
            masks = torch.from_numpy(np.stack([rise_mask(a.seed, i, grid, p1, size) for i in range(start, min(start + a.batch, n_masks))]))[:, None]
            s = score(baseline + masks * (x - baseline))
            total += (s[:, None, None].double() * masks[:, 0].double()).sum(0)
        return total / (n_masks * p1)

    if "rise" in want:
        t, passes, sal = side_by_side("rise", [("RISE", rise)])["RISE"]
        add("rise", "RISE in PyTorch (same masks)", t, passes, sal.numpy())

    from lime import lime_image

    class ReplayLimeImage(lime_image.LimeImageExplainer):
        """lime_image drawing xaiclip's coalitions instead of its own; it builds the images as it always does."""

        def data_labels(self, image, fudged_image, segments, classifier_fn, num_samples, batch_size=10):
            data = full["lime"][0]["coalitions"].astype(np.int64)
            assert len(data) == num_samples and (data[0] == 1).all(), "sample 0 must be the unperturbed image"
            images = []
            for row in data:
                temp = image.copy()
                off = np.isin(segments, np.flatnonzero(row == 0))
                temp[off] = fudged_image[off]
                images.append(temp)
            labels = [classifier_fn(np.array(images[i:i + batch_size])) for i in range(0, num_samples, batch_size)]
            return data, np.concatenate(labels)

    class ReplayKernelShap(KernelShap):
        """Captum's KernelShap drawing xaiclip's coalitions (all-off and all-on first) instead of its own."""

        def kernel_shap_perturb_generator(self, original_inp, **kwargs):
            for row in full["kernelshap"][0]["coalitions"]:
                yield torch.from_numpy(row.astype(np.int64))[None]

    class Float64Regression(SkLearnLinearRegression):
        """Captum's linear regression fitted on float64 copies of the samples, scores and weights that Captum
        casts to float32: with its 1e6 weight on the all-off and all-on samples, a float32 fit is off by
        ~1e-3 of the map's largest value (xaiclip's exact constraint and a float64 fit of Captum's
        weighting differ by ~3e-5 on the 128² demo)."""

        def fit(self, train_data, **kwargs):
            tensors = [t.double() for t in train_data.dataset.tensors]
            return super().fit(DataLoader(TensorDataset(*tensors), batch_size=len(tensors[0])), **kwargs)

    class ReplayKernelShap64(ReplayKernelShap):
        def __init__(self, forward_func):
            super().__init__(forward_func)
            self.interpretable_model = Float64Regression()

    def lime_package(explainer=lime_image.LimeImageExplainer):
        score.passes = 0
        seg = full["lime"][0]["segments"].astype(np.int64)

        def classify(images):
            s = score(torch.from_numpy(images[..., 0].astype(np.float32))[:, None]).numpy()
            return np.stack([s, 1 - s], 1)

        e = explainer(kernel_width=0.25, random_state=a.seed).explain_instance(
            x[0, 0].numpy().astype(np.float64), classify, labels=(0,), top_labels=None, hide_color=0, num_samples=a.samples,
            batch_size=a.batch, segmentation_fn=lambda _: seg)
        weights = dict(e.local_exp[0])
        return np.vectorize(lambda l: weights.get(l, 0.0))(seg)

    for method, cls_ in [(m, c) for m, c in (("lime", Lime), ("kernelshap", KernelShap)) if m in want]:
        seg = torch.from_numpy(full[method][0]["segments"].astype(np.int64)).reshape(1, 1, size, size)

        def run(cls_=cls_, n=a.samples):
            score.passes = 0
            return cls_(score).attribute(x, baselines=0.0, feature_mask=seg, n_samples=n, perturbations_per_eval=a.batch)

        captum = f"Captum {cls_.__name__}"
        if method == "lime":
            peers = [(captum, run), ("lime (lime_image)", lime_package), ("lime_image, xaiclip's coalitions", lambda: lime_package(ReplayLimeImage))]
        else:
            n = len(full["kernelshap"][0]["coalitions"])
            peers = [(captum, run), ("Captum KernelShap, xaiclip's coalitions", lambda: run(ReplayKernelShap, n)),
                     ("the same, fit in float64", lambda: run(ReplayKernelShap64, n))]
        for name, (t, passes, sal) in side_by_side(method, peers).items():
            add(method, name, t, passes, sal if method == "lime" and "lime" in name else sal[0, 0].numpy())

    by = {(r["method"], r["implementation"]): r for r in rows}
    lines = [
        f"Same slice ({'bundled phantom, seed 7' if a.image is None else a.image}, organ-center {a.organ}), {a.weights}, score mean-prob over M0, zero baseline; "
        f"{os.cpu_count()} cores; model input {size}x{size}; xaiclip --precision {a.precision}; seconds = median of {a.repeat} rounds (per method: xaiclip, median of {a.repeat} runs after one untimed, then each peer once); RISE {n_masks} masks, LIME/SHAP {a.samples} samples, batch {a.batch}.",
        "",
        "| method | implementation | seconds | forward passes | max abs diff / max abs | Pearson r | xaiclip full-image speed-up | xaiclip ROI speed-up |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        full_x = by[(r["method"], "xaiclip (full image)")]["seconds"]
        roi_x = by[(r["method"], "xaiclip (CLIP ROI)")]["seconds"]
        peer = not r["implementation"].startswith("xaiclip")
        f = lambda v: "–" if v != v else f"{v:.2e}"
        lines.append(
            f"| {r['method']} | {r['implementation']} | {r['seconds']:.2f} | {r['forward_passes']} | {f(r['max_rel_diff'])} | "
            f"{'–' if r['pearson_r'] != r['pearson_r'] else format(r['pearson_r'], '.4f')} | "
            f"{r['seconds'] / full_x:.1f}x | {r['seconds'] / roi_x:.1f}x |" if peer else
            f"| {r['method']} | {r['implementation']} | {r['seconds']:.2f} | {r['forward_passes']} | – | – | | |"
        )
    table = "\n".join(lines) + "\n"
    open(os.path.join(a.out, "peers.md"), "w").write(table)
    json.dump(rows, open(os.path.join(a.out, "peers.json"), "w"), indent=1)
    print(table)


if __name__ == "__main__":
    main()
