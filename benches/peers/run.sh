#!/usr/bin/env bash
# Side-by-side timing and agreement of xaiclip against Captum, MONAI, the RISE algorithm in PyTorch and
# the lime package, on the same weights, slice, target and settings. Opt-in (not in CI): makes a venv in
# benches/peers/.venv (or uses $PYTHON), builds xaiclip, and writes benches/peers/out/peers.md.
#   benches/peers/run.sh [--repeat R] [--rise-masks N] [--samples N] [--size 128|256|512] [--only METHODS]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
if [ -z "${PYTHON:-}" ]; then
  if [ ! -x "$here/.venv/bin/python" ]; then
    python3 -m venv "$here/.venv"
    "$here/.venv/bin/pip" install -q -r "$here/requirements.txt"
  fi
  PYTHON="$here/.venv/bin/python"
fi
(cd "$root" && cargo build --release --quiet)
"$PYTHON" "$here/peers.py" --xaiclip "$root/target/release/xaiclip" --weights "$root/weights/unet" --out "$here/out" "$@"
