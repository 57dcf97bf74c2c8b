"""The engine's errors as Python exceptions, with the command line's messages."""

import numpy as np
import pytest

import xaiclip
from conftest import QUICK, run_cli


def test_missing_files_are_file_not_found(explainer, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.nii.gz"):
        xaiclip.read_image(tmp_path / "nothing.nii.gz")
    with pytest.raises(FileNotFoundError):
        explainer.explain(tmp_path / "nothing.nii.gz", slice=0)


def test_corrupt_files_are_value_errors_naming_the_file(tmp_path):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(ValueError, match="bad.nii.gz") as info:
        xaiclip.read_image(bad)
    cli = run_cli("info", bad, check=False)
    assert cli.returncode == 2 and str(info.value).splitlines()[0] in cli.stderr


def test_an_absent_organ_is_organ_absent(explainer):
    ct, labels, affine = xaiclip.phantom()
    empty = next(k for k in range(ct.shape[2]) if not (labels[:, :, k] == 1).any())
    with pytest.raises(xaiclip.OrganAbsentError, match="no liver") as info:
        explainer.explain(ct, "liver", label=labels, affine=affine, slice=empty, **QUICK)
    assert isinstance(info.value, ValueError) and isinstance(info.value, xaiclip.XaiclipError)


def test_an_roi_that_misses_is_roi_miss_unless_a_fallback_is_given(explainer):
    ct, labels, affine = xaiclip.phantom()
    tight = xaiclip.Explainer(device="cpu", roi_threshold="top:0.005")
    quick = dict(QUICK, roi="clip")
    with pytest.raises(xaiclip.RoiMissError, match="covers .*% of the U-Net's own liver prediction"):
        tight.explain(ct, label=labels, affine=affine, **quick)
    e = tight.explain(ct, label=labels, affine=affine, roi_fallback="seg", **quick)
    assert e.metrics["roi_fallback"] == "seg" and e.metrics["roi_coverage"] < 0.9


def test_bad_options_are_value_errors(explainer):
    ct, labels, affine = xaiclip.phantom()
    args = dict(label=labels, affine=affine)
    with pytest.raises(ValueError, match="unknown option \"occlusion_widnow\""):
        explainer.explain(ct, occlusion_widnow=3, **args)
    with pytest.raises(ValueError, match="'many'"):
        explainer.explain(ct, masks="many", **args)
    with pytest.raises(ValueError, match="method=\"grad-cam\": expected one of occlusion, rise, lime, kernelshap"):
        explainer.explain(ct, method="grad-cam", **args)
    with pytest.raises(ValueError, match="roi="):
        explainer.explain(ct, roi="everywhere", **args)
    with pytest.raises(ValueError, match="unknown organ|organ"):
        explainer.explain(ct, organ="appendix", **args)
    with pytest.raises(ValueError, match="window"):
        explainer.explain(ct, occlusion_window=0, **args)
    with pytest.raises(ValueError, match="device="):
        xaiclip.Explainer(device="tpu")
    with pytest.raises(ValueError, match="batch="):
        xaiclip.Explainer(batch=0)


def test_a_gpu_that_cannot_be_used_is_device_unavailable():
    # No GPU on this machine (or no driver, or built without nvcc): each says why.
    with pytest.raises(xaiclip.DeviceUnavailableError) as info:
        xaiclip.Explainer(device="cuda")
    assert isinstance(info.value, RuntimeError) and str(info.value)
