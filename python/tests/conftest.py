"""Shared fixtures: the xaiclip command line (the repository's release build) and the demo case on disk."""

import os
import pathlib
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


def cli_path() -> pathlib.Path:
    path = pathlib.Path(os.environ.get("XAICLIP_BIN", REPO / "target" / "release" / "xaiclip"))
    if not path.is_file():
        pytest.fail(f"{path}: no xaiclip binary; run `cargo build --release` first or set XAICLIP_BIN")
    return path


def run_cli(*args, check=True, **kw):
    """Runs the xaiclip command line (CPU) and returns the completed process."""
    p = subprocess.run([str(cli_path()), "--device", "cpu", *map(str, args)], capture_output=True, text=True, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"xaiclip {' '.join(map(str, args))} failed ({p.returncode}):\n{p.stderr}")
    return p


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    """`xaiclip phantom --seed 7`: the demo case as NIfTI (ct.nii.gz, labels.nii.gz)."""
    d = tmp_path_factory.mktemp("demo")
    run_cli("phantom", "--seed", 7, "--out", d)
    return d


@pytest.fixture(scope="session")
def explainer():
    import xaiclip

    return xaiclip.Explainer(device="cpu")


# Cheap settings for the tests that check plumbing rather than maps: 16 windows, no curves.
QUICK = dict(roi="none", occlusion_window=64, occlusion_stride=64, faithfulness_steps=0)
