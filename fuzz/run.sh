#!/usr/bin/env bash
# Runs the fuzz targets (default: all; or a quoted list as $2) for SECONDS each (default 600) on one core, one after the other, and prints
# each target's final libFuzzer statistics line. New inputs go to fuzz/work/<target> (not committed);
# crashes to fuzz/artifacts/<target>. Needs `cargo install cargo-fuzz`; runs on the stable toolchain with
# RUSTC_BOOTSTRAP=1 (cargo-fuzz passes -Z sanitizer flags), or on FUZZ_TOOLCHAIN (e.g. nightly) when set.
set -uo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
targets=${2:-"nifti_reader dicom_series model_loader png_mask torch_checkpoint"}
for t in $targets; do
  mkdir -p fuzz/work/$t
  # The DICOM reader checks declared element lengths against the file before dicom-rs allocates them
  # (it used to need 8 GiB here), so every target runs under the same limit.
  limit=4096
  RUSTC_BOOTSTRAP=${RUSTC_BOOTSTRAP-1} cargo ${FUZZ_TOOLCHAIN:+"+$FUZZ_TOOLCHAIN"} fuzz run -O $t fuzz/work/$t fuzz/corpus/$t -- -max_total_time=$seconds -rss_limit_mb=$limit -malloc_limit_mb=$limit -timeout=30 -print_final_stats=1 > fuzz/work/$t.log 2>&1
  echo "$t: exit $? $(grep -E '^(#[0-9]+.*DONE|stat::number_of_executed_units|stat::average_exec_per_sec)' fuzz/work/$t.log | tr '\n' ' ')"
  ls fuzz/artifacts/$t 2>/dev/null | sed "s/^/  finding: /"
done
