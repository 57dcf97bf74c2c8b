#!/usr/bin/env bash
# The device check for the CUDA backend, in two halves.
#
#   benches/gpu-check.sh build   here (no GPU): builds the binary with the kernels (nvcc from PyPI, as CI
#                                does), strips it into .gpu/ (ignored by git) and prints the one call to make.
#   benches/gpu-check.sh run     on the lent GPU machine (it has nvcc and PyTorch but no Rust): runs
#                                `xaiclip selftest --device cuda` at f32, tf32 and bf16, then
#                                `xaiclip bench` for RISE with 4000 masks at 256x256 on the GPU and on the
#                                CPU, and prints the speed-up table last. Logs and JSON go to $OUT.
#
# The device call (device tool `run`), within 8 minutes:
#   command: bash benches/gpu-check.sh run     carry: [".gpu"]     timeout_s: 540
# Read /work/.library/device/README.md, METHOD.md, HOPPER.md and H200.md first.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
build)
    venv=.venv-nvcc
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r .ci/nvcc-requirements.txt
    XAICLIP_PYTHON="$PWD/$venv/bin/python" XAICLIP_REQUIRE_NVCC=1 cargo build --release
    mkdir -p .gpu
    objcopy --strip-debug target/release/xaiclip .gpu/xaiclip
    grep -qxF '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
    ls -la .gpu/xaiclip
    echo 'now: device run, command "bash benches/gpu-check.sh run", carry [".gpu"], timeout_s 540'
    ;;
run)
    out="${OUT:-gpu-check-out}"
    mkdir -p "$out"
    bin=.gpu/xaiclip
    [ -x "$bin" ] || { echo "no $bin: run 'benches/gpu-check.sh build' here and carry .gpu" >&2; exit 1; }
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv | tee "$out/nvidia-smi.csv" || true
    status=0
    # Kernels against their CPU twins, then each method end to end (error vs CPU, then timed at 4000).
    timeout 200 "$bin" selftest --device cuda --json "$out/selftest-f32.json" 2>&1 | tee "$out/selftest-f32.txt" || status=1
    for p in tf32 bf16; do
        timeout 60 "$bin" selftest --device cuda --precision "$p" --kernels-only --json "$out/selftest-$p.json" 2>&1 | tee "$out/selftest-$p.txt" || status=1
    done
    # The issue's bar: RISE, 4000 masks, 256x256, GPU against this machine's CPU.
    for d in cuda cpu; do
        timeout 150 "$bin" bench --demo --methods rise --masks 4000 --faithfulness-steps 0 --device "$d" --json "$out/bench-$d.json" 2>&1 | tee "$out/bench-$d.txt" || status=1
    done
    python3 - "$out" <<'PY' || status=1
import json, sys
out = sys.argv[1]
rows = {}
for d in ("cuda", "cpu"):
    try:
        rows[d] = {r["roi"]: r["seconds"] for r in json.load(open(f"{out}/bench-{d}.json"))["rows"]}
    except Exception as e:
        print(f"bench-{d}.json: {e}")
print("\n| RISE 4000 masks, 256x256 | cpu s | cuda s | speed-up |\n|---|---:|---:|---:|")
for roi in rows.get("cuda", {}):
    c, g = rows.get("cpu", {}).get(roi), rows["cuda"][roi]
    print(f"| {roi} | {c if c is not None else '-'} | {g:.3f} | {c / g if c else float('nan'):.1f}x |")
for p in ("f32", "tf32", "bf16"):
    try:
        k = json.load(open(f"{out}/selftest-{p}.json"))["kernels"]
        bad = [f"{r['kernel']} {r['shape']}" for r in k if not r["passed"]]
        print(f"selftest {p}: {len(k) - len(bad)}/{len(k)} kernel checks passed" + (f"; FAILED: {', '.join(bad)}" if bad else ""))
    except Exception as e:
        print(f"selftest {p}: no report ({e})")
PY
    exit "$status"
    ;;
*)
    echo "usage: benches/gpu-check.sh build|run" >&2
    exit 2
    ;;
esac
