#!/usr/bin/env bash
# The Python package's tests: builds and installs ./python into a fresh virtual environment (with the
# pinned test extras), then runs pytest against it and the release `xaiclip` binary that
# `cargo test --release` (or `cargo build --release`) left in target/release.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
venv=${XAICLIP_PY_VENV:-.venv-python}
rm -rf "$venv"
python3 -m venv "$venv"
# The engine's compiled dependencies are shared with the cargo build above.
CARGO_TARGET_DIR="$PWD/target" "$venv/bin/pip" install --quiet --disable-pip-version-check "./python[test]"
# From outside the source folder, so that the installed package is the one imported.
cd python/tests
"../../$venv/bin/python" -m pytest -q -rs "$@"
