#!/usr/bin/env bash
# Seed corpus for the fuzz targets, made from xaiclip's own writers (run from the repository root after
# `cargo build --release`; needs python3 with numpy and safetensors for the CoOp seed).
set -euo pipefail
X=target/release/xaiclip
C=fuzz/corpus
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p $C/nifti_reader $C/dicom_series $C/model_loader $C/png_mask $C/torch_checkpoint
for f in model.pt checkpoint_final.pth; do { printf '\x00'; cat tests/fixtures/torch_checkpoints/$f; } > $C/torch_checkpoint/$f; done
$X phantom --size 32 --slices 2 --seed 1 --out "$tmp/p" 2>/dev/null
{ printf '\x01'; cat "$tmp/p/labels.nii.gz"; } > $C/nifti_reader/labels_gz
{ printf '\x00'; gzip -dc "$tmp/p/ct.nii.gz"; } > $C/nifti_reader/ct_nii
$X phantom --layout chaos-ct --cases 1 --size 32 --slices 2 --seed 1 --out "$tmp/c" 2>/dev/null
series="$tmp/c/CT/1/DICOM_anon"
{ cat "$series/i00001.dcm"; printf 'XSPLIT'; cat "$series/i00002.dcm"; } > $C/dicom_series/two_slices
cp "$tmp/c/CT/1/Ground/liver_GT_000.png" "$tmp/mask.png"
{ printf '\x00'; cat "$tmp/mask.png"; } > $C/png_mask/ct_mask
python3 - "$C/model_loader" <<'PY'
import json, struct, sys, numpy as np
from safetensors.numpy import save
out = sys.argv[1]
def seed(name, selector, config, tensors):
    c = json.dumps(config).encode()
    with open(f"{out}/{name}", "wb") as f:
        f.write(bytes([selector]) + struct.pack("<H", len(c)) + c + save(tensors))
rng = np.random.default_rng(0)
unet = "tests/fixtures/unet_instance_noaffine_odd"
with open(f"{unet}/model.safetensors", "rb") as f:
    w = f.read()
c = open(f"{unet}/config.json", "rb").read()
open(f"{out}/unet", "wb").write(bytes([0]) + struct.pack("<H", len(c)) + c + w)
seed("coop", 1, {"classes": ["background", "liver"], "class_position": "end"},
     {k: rng.standard_normal((4, 8)).astype(np.float32) for k in ["background", "liver"]})
PY
ls -la $C/*
