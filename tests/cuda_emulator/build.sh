#!/usr/bin/env bash
# Builds the stand-in libcuda.so that runs kernels/*.cu on the CPU (see libcuda.cpp) into DIR.
#   tests/cuda_emulator/build.sh DIR [PRELUDE]     PRELUDE: C++ placed before the kernels
# Then: LD_LIBRARY_PATH=DIR xaiclip selftest --device cuda --quick   (a binary built with the kernels)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
kernels="$here/../../kernels"
out="$1"
mkdir -p "$out"
{
    printf '%s\n' "${2:-}"
    for f in "$kernels"/*.cu; do echo "#include \"$f\""; done
    echo 'static const std::pair<const char*, void (*)(void**)> emu_kernels[] = {'
    # Every `extern "C" __global__ void [__launch_bounds__(N)] NAME(` becomes a registry entry.
    grep -hoE '^extern "C" __global__ void (__launch_bounds__\([^)]*\) )?[a-z0-9_]+\(' "$kernels"/*.cu | sed -E 's/.* ([a-z0-9_]+)\($/EMU_KERNEL(\1)/'
    echo '};'
} > "$out/kernels.inc"
g++ -O2 -std=c++17 -shared -fPIC -ffp-contract=off -Wno-unknown-pragmas -I"$here" -I"$out" "$here/libcuda.cpp" -o "$out/libcuda.so"
