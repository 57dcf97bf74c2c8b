"""The Python result equals the command line's bit for bit: the same engine, settings and seed."""

import json

import nibabel as nib
import numpy as np
import pytest

import xaiclip
from conftest import run_cli

CASES = [(m, r) for m in xaiclip.METHODS for r in ("none", "clip")]


@pytest.mark.parametrize("method,roi", CASES)
def test_saliency_equals_the_cli_bit_for_bit(tmp_path, demo_dir, explainer, method, roi):
    ct, labels = demo_dir / "ct.nii.gz", demo_dir / "labels.nii.gz"
    out = tmp_path / "cli"
    run_cli("explain", "--image", ct, "--label", labels, "--slice", "organ-center", "--method", method,
            "--roi", roi, "--out", out)
    cli = nib.load(out / "saliency.nii.gz")
    cli_data = np.asarray(cli.dataobj)
    # From paths: the same file, byte for byte.
    e = explainer.explain(ct, "liver", method, roi, label=labels, slice="organ-center")
    e.to_nifti(tmp_path / "py.nii.gz")
    assert (tmp_path / "py.nii.gz").read_bytes() == (out / "saliency.nii.gz").read_bytes()
    assert np.array_equal(e.saliency_volume, cli_data)
    assert np.count_nonzero(cli_data) > 0
    # The report's figures are the same run's.
    report = json.loads((out / "report.json").read_text())
    assert report["slice"] == e.slice
    keys = ("forward_passes", "samples", "roi_fraction", "roi_coverage", "dice", "iou", "auroc", "deletion_auc",
            "insertion_auc")
    for key in keys:
        assert report["result"][key] == e.metrics[key], key
    if roi == "none":
        return  # the full-image runs are the slow ones; arrays in any layout are checked in test_arrays.py
    # From numpy arrays as nibabel loads them (float64, Fortran order) with the affine.
    img = nib.load(ct)
    lab = np.asarray(nib.load(labels).dataobj)
    a = explainer.explain(img.get_fdata(), "liver", method, roi, label=lab, affine=img.affine)
    assert np.array_equal(a.saliency_volume, cli_data)
    assert np.array_equal(a.saliency, cli_data[:, :, a.slice])
    assert a.slice == e.slice and all(a.metrics[key] == e.metrics[key] for key in keys)


def test_options_reach_the_engine_as_the_flags_do(tmp_path, demo_dir, explainer):
    ct, labels = demo_dir / "ct.nii.gz", demo_dir / "labels.nii.gz"
    out = tmp_path / "cli"
    run_cli("explain", "--image", ct, "--label", labels, "--slice", "organ-center", "--method", "rise", "--roi",
            "seg", "--masks", 120, "--grid", 6, "--p1", 0.4, "--seed", 5, "--score", "dice", "--margin-mm", 8,
            "--out", out)
    e = explainer.explain(ct, "liver", "rise", "seg", label=labels, masks=120, grid=6, p1=0.4, seed=5,
                          score="dice", margin_mm=8)
    assert np.array_equal(e.saliency_volume, np.asarray(nib.load(out / "saliency.nii.gz").dataobj))
    assert e.settings["rise"] == {"masks": 120, "grid": 6, "p1": 0.4, "seed": 5, "tol": None}
    assert e.settings["score"] == "dice" and e.settings["margin_mm"] == 8 and "occlusion" not in e.settings
    report = json.loads((out / "report.json").read_text())
    assert report["settings"] == e.settings
    # Dice of M0 against itself: the unperturbed score of score="dice" is exactly 1.
    assert report["result"]["unperturbed_score"] == e.metrics["unperturbed_score"] == 1.0
    assert report["provenance"]["command_line"][1:4] == ["--device", "cpu", "explain"]
    # Which weights made it, and how good the segmentation being explained is.
    import hashlib

    from conftest import REPO

    unet = REPO / "weights" / "unet" / "model.safetensors"
    assert report["weights"]["unet"]["sha256"] == hashlib.sha256(unet.read_bytes()).hexdigest()
    assert set(report["weights"]) == {"unet", "clip", "coop"}
    m0, truth = e.m0, e.truth
    dice = 2 * np.logical_and(m0, truth).sum() / (m0.sum() + truth.sum())
    assert report["result"]["unet_dice"] == e.metrics["unet_dice"]
    assert abs(e.metrics["unet_dice"] - dice) < 1e-12 and dice > 0.8
    # Another seed, another map.
    other = explainer.explain(ct, "liver", "rise", "seg", label=labels, masks=120, grid=6, p1=0.4, seed=6,
                              score="dice", margin_mm=8)
    assert not np.array_equal(other.saliency_volume, e.saliency_volume)


def test_phantom_is_the_cli_phantom(demo_dir):
    ct, labels, affine = xaiclip.phantom()
    img = nib.load(demo_dir / "ct.nii.gz")
    assert np.array_equal(ct, img.get_fdata())
    assert np.array_equal(labels, np.asarray(nib.load(demo_dir / "labels.nii.gz").dataobj))
    assert np.allclose(affine, img.affine)
    read, read_affine = xaiclip.read_image(demo_dir / "ct.nii.gz")
    assert read.dtype == np.float32 and np.array_equal(read, ct)
    assert np.array_equal(read_affine, affine)


def test_mr_phantom_is_the_cli_mr_phantom(tmp_path):
    run_cli("phantom", "--seed", 9, "--size", 64, "--slices", 6, "--mr", "t2-spir", "--out", tmp_path)
    mr, labels, affine = xaiclip.phantom(9, 64, 6, mr="t2-spir")
    img = nib.load(tmp_path / "mr_t2_spir.nii.gz")
    assert np.array_equal(mr, img.get_fdata()) and np.allclose(affine, img.affine)
    assert np.array_equal(labels, xaiclip.phantom(9, 64, 6)[1]), "MR and CT of one seed share the anatomy"
    with pytest.raises(ValueError, match="t2-spir"):
        xaiclip.phantom(mr="t2")


def test_bench_rows_match_the_cli_bench(tmp_path, explainer):
    run_cli("bench", "--demo", "--methods", "occlusion", "--json", tmp_path / "b.json")
    cli_rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    import pandas as pd

    frame = xaiclip.bench(demo=True, methods=["occlusion"], device="cpu", warmup=1)  # maps from the first run
    assert isinstance(frame, pd.DataFrame) and "agreement" not in frame.columns
    rows = frame.to_dict("records")
    assert [(r["method"], r["roi"]) for r in rows] == [("occlusion", "none"), ("occlusion", "clip")]
    for py_row, cli_row in zip(rows, cli_rows):
        for key in ("forward_passes", "roi_fraction", "dice", "insertion_auc"):
            assert py_row[key] == cli_row[key], key


def test_an_nnunet_result_folder_explains_its_own_classes_as_the_cli_does(tmp_path):
    from conftest import REPO

    trained = REPO / "tests" / "fixtures" / "nnunet_trained"
    model = trained / "Dataset002_Phantom" / "nnUNetTrainer__nnUNetPlans__2d"
    ct, labels = trained / "case.nii.gz", trained / "labels.nii.gz"
    out = tmp_path / "cli"
    run_cli("explain", "--model", model, "--image", ct, "--label", labels, "--label-ids", "model", "--organ",
            "right-kidney", "--slice", "organ-center", "--method", "occlusion", "--roi", "clip", "--out", out)
    nnunet = xaiclip.Explainer(model, device="cpu")
    assert nnunet.model_size == 128
    e = nnunet.explain(ct, "right-kidney", "occlusion", "clip", label=labels, label_ids="model", slice="organ-center")
    e.to_nifti(tmp_path / "py.nii.gz")
    assert (tmp_path / "py.nii.gz").read_bytes() == (out / "saliency.nii.gz").read_bytes()
    report = json.loads((out / "report.json").read_text())
    assert report["organ"] == "kidney_right" and report["result"]["roi_coverage"] >= 0.9
    assert e.metrics["dice"] == report["result"]["dice"]
    # The model's own window: another one is refused, naming the reason.
    with pytest.raises(ValueError, match="the model normalises its input itself"):
        xaiclip.Explainer(model, device="cpu", window="-160,240")


def test_nnunet_mirroring_is_the_cli_mirroring(tmp_path):
    from conftest import REPO

    trained = REPO / "tests" / "fixtures" / "nnunet_trained"
    model = trained / "Dataset002_Phantom" / "nnUNetTrainer__nnUNetPlans__2d"
    ct = trained / "case.nii.gz"
    out = tmp_path / "cli"
    run_cli("explain", "--model", model, "--image", ct, "--organ", "liver", "--slice", "4", "--method", "occlusion",
            "--roi", "none", "--occlusion-window", "32", "--faithfulness-steps", "0", "--mirror", "--out", out)
    mirrored = xaiclip.Explainer(model, device="cpu", mirror=True)
    e = mirrored.explain(ct, "liver", "occlusion", "none", slice=4, occlusion_window=32, faithfulness_steps=0)
    e.to_nifti(tmp_path / "py.nii.gz")
    assert (tmp_path / "py.nii.gz").read_bytes() == (out / "saliency.nii.gz").read_bytes()
    plain = xaiclip.Explainer(model, device="cpu").explain(
        ct, "liver", "occlusion", "none", slice=4, occlusion_window=32, faithfulness_steps=0)
    assert not np.array_equal(plain.saliency, e.saliency), "mirroring changed nothing"
    with pytest.raises(xaiclip.errors.UnsupportedError, match="--mirror"):
        xaiclip.Explainer(device="cpu", mirror=True)
