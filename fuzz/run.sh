#!/usr/bin/env bash
# Runs the fuzz targets (default: all; or a quoted list as $2) for SECONDS each (default 600) on one core, one after the other, and prints
# each target's final libFuzzer statistics line. New inputs go to fuzz/work/<target> (not committed);
# crashes to fuzz/artifacts/<target>. Needs a nightly toolchain and `cargo install cargo-fuzz`.
set -uo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
targets=${2:-"nifti_reader dicom_series model_loader png_mask"}
for t in $targets; do
  mkdir -p fuzz/work/$t
  # dicom-rs allocates (and zero-fills) whatever element length a file declares, up to 4 GiB, before
  # finding the file too short: an upstream behaviour, so the DICOM target gets room above it.
  limit=4096
  [ $t = dicom_series ] && limit=8192
  cargo +nightly fuzz run $t fuzz/work/$t fuzz/corpus/$t -- -max_total_time=$seconds -rss_limit_mb=$limit -malloc_limit_mb=$limit -timeout=30 -print_final_stats=1 > fuzz/work/$t.log 2>&1
  echo "$t: exit $? $(grep -E '^(#[0-9]+.*DONE|stat::number_of_executed_units|stat::average_exec_per_sec)' fuzz/work/$t.log | tr '\n' ' ')"
  ls fuzz/artifacts/$t 2>/dev/null | sed "s/^/  finding: /"
done
