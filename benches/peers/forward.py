"""U-Net forward passes, xaiclip against PyTorch on the same weights, layer by layer.

For the bundled U-Net (or --model) and the paper-sized BasicUNet (32, 32, 64, 128, 256, 32; random weights
written to OUT/paper_unet, so both sides load the same file), at every --sizes x --batches:

- xaiclip: `xaiclip profile --json` (one warm-up, then --repeat timed forwards; every backend call timed
  with its shapes);
- PyTorch: MONAI's BasicUNet with the same state dict, torch.no_grad(), every core, one warm-up and
  --repeat timed forwards, then one forward under torch.profiler for its per-operator times.

With --precision bf16 xaiclip runs `--precision bf16` (AMX tiles where the CPU has them) and PyTorch its
forward under `torch.autocast("cpu", dtype=torch.bfloat16)` (oneDNN's bf16 convolutions, AMX included):
reduced precision on both sides.

Prints and writes OUT/forward.md: the CPU (model name, vector extensions), PyTorch's build (its MKL and
oneDNN lines) and threads, the median times and their ratio, and each side's slowest operators. Absolute
times are this machine's; compare the ratio.

  python benches/peers/forward.py --xaiclip target/release/xaiclip --out benches/peers/out
"""

import argparse
import json
import os
import statistics
import subprocess
import time

import torch
from monai.networks.nets import BasicUNet
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PAPER = {"spatial_dims": 2, "in_channels": 1, "out_channels": 14, "features": [32, 32, 64, 128, 256, 32],
         "act": ["LeakyReLU", {"negative_slope": 0.1}], "norm": ["instance", {"affine": True}], "bias": True,
         "dropout": 0.0, "upsample": "deconv", "input_size": 256}


def network(folder):
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    kwargs = {k: (tuple(v) if isinstance(v, list) and k in ("act", "norm") else v) for k, v in config.items()
              if k in ("spatial_dims", "in_channels", "out_channels", "features", "act", "norm", "bias", "dropout", "upsample")}
    net = BasicUNet(**kwargs)
    net.load_state_dict(load_file(os.path.join(folder, "model.safetensors")))
    return net.eval(), config


def paper_folder(out):
    folder = os.path.join(out, "paper_unet")
    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(0)
    kwargs = {k: (tuple(v) if k in ("act", "norm") else v) for k, v in PAPER.items() if k != "input_size"}
    net = BasicUNet(**kwargs)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, os.path.join(folder, "model.safetensors"))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(PAPER, f, indent=1)
    return folder


def torch_side(net, in_channels, size, batch, repeat, precision):
    x = torch.rand(batch, in_channels, size, size, generator=torch.Generator().manual_seed(0))
    times = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        net(x)
        for _ in range(repeat):
            started = time.perf_counter()
            net(x)
            times.append(time.perf_counter() - started)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            net(x)
    ops = [(e.key, e.count, e.self_cpu_time_total / 1e3) for e in prof.key_averages()]
    ops.sort(key=lambda o: -o[2])
    return statistics.median(times), ops


def cpu_words():
    with open("/proc/cpuinfo") as f:
        info = f.read()
    model = next((l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("model name")), "unknown CPU")
    flags = next((l.split(":", 1)[1].split() for l in info.splitlines() if l.startswith("flags")), [])
    isa = [name for flag, name in (("avx2", "AVX2"), ("avx512f", "AVX-512F"), ("avx512_bf16", "AVX512-BF16"), ("amx_bf16", "AMX-BF16")) if flag in flags]
    return f"{model}; {', '.join(isa)}; {os.cpu_count()} logical CPUs"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--xaiclip", default=os.path.join(ROOT, "target", "release", "xaiclip"))
    ap.add_argument("--model", default=os.path.join(ROOT, "weights", "unet"), help="a BasicUNet folder (the bundled one by default)")
    ap.add_argument("--no-paper", action="store_true", help="skip the paper-sized U-Net")
    ap.add_argument("--sizes", default="128,256,512")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--top", type=int, default=5, help="slowest operators listed per side")
    ap.add_argument("--precision", choices=["f32", "bf16"], default="f32",
                    help="bf16: xaiclip --precision bf16 against PyTorch under CPU bf16 autocast")
    ap.add_argument("--out", default=os.path.join(HERE, "out"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(os.cpu_count())
    sizes = [int(s) for s in args.sizes.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    config_lines = [l.strip(" -") for l in torch.__config__.show().splitlines()
                    if any(k in l for k in ("MKL", "oneDNN", "OpenMP")) and "Build settings" not in l]
    md = [f"# U-Net forward: xaiclip and PyTorch on the same weights\n",
          f"CPU: {cpu_words()}. PyTorch {torch.__version__}, {torch.get_num_threads()} threads; {'; '.join(config_lines)}.\n",
          f"Command: `python benches/peers/forward.py --sizes {args.sizes} --batches {args.batches} --repeat {args.repeat} "
          f"--precision {args.precision}`; "
          "medians of the timed forwards after one warm-up, random inputs in [0, 1]. Ratio > 1: xaiclip is faster.\n"]
    models = [("bundled", args.model)] + ([] if args.no_paper else [("paper-sized", paper_folder(args.out))])
    rows, details = [], []
    for name, folder in models:
        report = os.path.join(args.out, f"profile_{name}_{args.precision}.json")
        subprocess.run([args.xaiclip, "profile", "--device", "cpu", "--model", folder, "--sizes", args.sizes, "--batches", args.batches,
                        "--repeat", str(args.repeat), "--precision", args.precision, "--json", report], check=True, stdout=subprocess.DEVNULL)
        with open(report) as f:
            ours = json.load(f)
        net, config = network(folder)
        for p in ours["profiles"]:
            theirs, ops = torch_side(net, config["in_channels"], p["size"], p["batch"], args.repeat, args.precision)
            mine = p["median_seconds"]
            rows.append(f"| {name} | {p['size']}² | {p['batch']} | {1e3 * mine:.1f} | {1e3 * theirs:.1f} | {theirs / mine:.2f} | "
                        f"{p['flops'] / mine / 1e9:.0f} | {p['flops'] / theirs / 1e9:.0f} |")
            print(rows[-1], flush=True)
            slowest = sorted(p["ops"], key=lambda o: -o["seconds"])[: args.top]
            details.append(f"\n**{name}, {p['size']}², batch {p['batch']}** — xaiclip: "
                           + "; ".join(f"{o['op']} {o['shapes']} {1e3 * o['seconds']:.1f} ms" for o in slowest)
                           + ". PyTorch: " + "; ".join(f"{k} x{c} {ms:.1f} ms" for k, c, ms in ops[: args.top]) + ".")
    md.append("| model | input | batch | xaiclip ms | PyTorch ms | ratio | xaiclip GFLOP/s | PyTorch GFLOP/s |\n|---|---|---:|---:|---:|---:|---:|---:|")
    md.extend(rows)
    md.append("\nSlowest operators per side (xaiclip: backend calls by shapes, summed per forward; PyTorch: torch.profiler self CPU time):")
    md.extend(details)
    name = "forward.md" if args.precision == "f32" else f"forward_{args.precision}.md"
    with open(os.path.join(args.out, name), "w") as f:
        f.write("\n".join(md) + "\n")
    print(f"wrote {os.path.join(args.out, name)}")


if __name__ == "__main__":
    main()
