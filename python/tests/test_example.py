"""The notebook-style example and the README's Python example run, and the package is the installed one."""

import os
import pathlib
import re
import shutil
import struct
import subprocess
import sys

import pytest

import xaiclip
from conftest import REPO

SHARED = REPO.parent / "shared" / "data" / "totalsegmentator"


def test_the_installed_package_is_imported():
    # Not the source folder: the tests check what `pip install ./python` built.
    assert "site-packages" in xaiclip.__file__, xaiclip.__file__
    assert (pathlib.Path(xaiclip.__file__).parent / "py.typed").is_file()


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def run_example(image, label, figure, *extra):
    script = REPO / "python" / "examples" / "notebook.py"
    p = subprocess.run([sys.executable, str(script), str(image), str(label), str(figure), *extra],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_the_notebook_example_draws_its_figure(tmp_path, demo_dir):
    out = run_example(demo_dir / "ct.nii.gz", demo_dir / "labels.nii.gz", tmp_path / "figure.png")
    dice = float(re.search(r"Dice (\d\.\d+)", out).group(1))
    assert dice > 0.5, out
    width, height = png_size(tmp_path / "figure.png")
    assert width == 1300 and abs(height - 460) <= 1


def test_the_notebook_example_on_real_ct(tmp_path):
    if not (SHARED / "ct_small.nii.gz").is_file():
        pytest.skip(f"SKIP: {SHARED} absent (the real TotalSegmentator CT)")
    out = run_example(SHARED / "ct_small.nii.gz", SHARED / "ct_small_seg.nii.gz", tmp_path / "real.png",
                      "--label-ids", "totalseg")
    coverage = float(re.search(r"covering (\d+\.\d)%", out).group(1))
    assert float(re.search(r"Dice (\d\.\d+)", out).group(1)) > 0.5 and coverage >= 90, out
    assert png_size(tmp_path / "real.png")[0] == 1300


def test_the_readme_python_example_runs(tmp_path, demo_dir):
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 12
    for name in ("ct.nii.gz", "labels.nii.gz"):
        shutil.copy(demo_dir / name, tmp_path / name)
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=""))
    assert p.returncode == 0, p.stderr
    assert "occlusion (clip) of liver" in p.stdout, p.stdout
    assert (tmp_path / "saliency.nii.gz").stat().st_size > 0
    png_size(tmp_path / "overlay.png")
