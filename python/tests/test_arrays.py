"""numpy at the boundary: dtypes, memory orders and views give the same map; bad arrays are refused."""

import numpy as np
import pytest

import xaiclip
from conftest import QUICK


@pytest.fixture(scope="module")
def case():
    ct, labels, affine = xaiclip.phantom()
    return ct, labels, affine


@pytest.fixture(scope="module")
def reference(explainer, case):
    ct, labels, affine = case
    return explainer.explain(ct, label=labels, affine=affine, **QUICK)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.int32])
def test_dtypes_give_the_same_map(explainer, case, reference, dtype):
    ct, labels, affine = case
    e = explainer.explain(ct.astype(dtype), label=labels, affine=affine, **QUICK)
    assert np.array_equal(e.saliency_volume, reference.saliency_volume)
    assert np.count_nonzero(reference.saliency) > 0


@pytest.mark.parametrize(
    "layout",
    [
        lambda a: np.ascontiguousarray(a),  # C order
        lambda a: np.asfortranarray(a),  # nibabel's order
        lambda a: np.repeat(a, 2, axis=0)[::2],  # a strided view
        lambda a: np.ascontiguousarray(a[::-1, ::-1])[::-1, ::-1],  # negative strides
        lambda a: np.ascontiguousarray(np.transpose(a, (2, 1, 0))).transpose(2, 1, 0),  # transposed view
    ],
    ids=["c", "fortran", "strided", "negative-strides", "transposed"],
)
def test_memory_layouts_give_the_same_map(explainer, case, reference, layout):
    ct, labels, affine = case
    image = layout(ct)
    assert np.array_equal(image, ct)
    e = explainer.explain(image, label=layout(labels), affine=affine, **QUICK)
    assert np.array_equal(e.saliency_volume, reference.saliency_volume)
    assert e.slice == reference.slice


def test_a_2d_slice_is_explained_on_its_own_grid(explainer, case, reference):
    ct, labels, affine = case
    k = reference.slice
    e = explainer.explain(ct[:, :, k], label=labels[:, :, k], affine=affine, **QUICK)
    assert e.saliency.shape == ct.shape[:2] and e.slice == 0
    assert np.array_equal(e.saliency, reference.saliency)


def test_the_orientation_is_nibabels(explainer, case, reference):
    # The same array with the first two axes swapped, and an affine that says so, is the same anatomy:
    # the engine must find the same map, transposed back, and not a silently re-oriented copy.
    ct, labels, affine = case
    swapped = affine[:, [1, 0, 2, 3]]
    e = explainer.explain(ct.transpose(1, 0, 2), label=labels.transpose(1, 0, 2), affine=swapped, **QUICK)
    assert np.array_equal(e.saliency_volume.transpose(1, 0, 2), reference.saliency_volume)


@pytest.mark.parametrize(
    "image,message",
    [
        (np.zeros(10, np.float32), "2-D slice or a 3-D volume"),
        (np.zeros((2, 3, 4, 5), np.float32), "2-D slice or a 3-D volume"),
        (np.zeros((0, 64, 4), np.float32), "empty"),
    ],
    ids=["1-d", "4-d", "empty"],
)
def test_wrong_shapes_are_value_errors(explainer, image, message):
    with pytest.raises(ValueError, match=message):
        explainer.explain(image, **QUICK)


def test_bad_values_and_affines_are_value_errors(explainer, case):
    ct, labels, affine = case
    bad = ct.copy()
    bad[3, 4, 5] = np.nan
    with pytest.raises(ValueError, match="non-finite|NaN"):
        explainer.explain(bad, affine=affine, slice=5, **QUICK)
    with pytest.raises(ValueError, match="4x4"):
        explainer.explain(ct, affine=np.eye(3), slice=5, **QUICK)
    with pytest.raises(ValueError, match="invertible"):
        explainer.explain(ct, affine=np.zeros((4, 4)), slice=5, **QUICK)
    with pytest.raises(ValueError, match="differs from the image"):
        explainer.explain(ct, label=labels[:, :, :4], affine=affine, **QUICK)
    with pytest.raises(ValueError, match="slice"):
        explainer.explain(ct, affine=affine, slice=99, **QUICK)


def test_unsupported_dtypes_are_type_errors(explainer):
    with pytest.raises(TypeError, match="dtype complex"):
        explainer.explain(np.zeros((64, 64, 4), np.complex64), **QUICK)
    with pytest.raises(TypeError, match="numpy array or a path"):
        explainer.explain([[1, 2], [3, 4]], **QUICK)


def test_maps_come_back_on_their_grids(explainer, case, reference):
    ct, _, _ = case
    n = explainer.model_size
    assert reference.saliency_volume.shape == ct.shape and reference.saliency_volume.dtype == np.float32
    assert reference.saliency_model.shape == (n, n)
    assert reference.roi.dtype == bool and reference.roi.all()  # roi="none": every pixel
    assert reference.m0.dtype == bool and reference.m0.any()
    assert reference.roi_probability is None
    assert reference.model_input.min() >= 0 and reference.model_input.max() <= 1
    assert reference.metrics["roi"] == "none" and reference.metrics["forward_passes"] == reference.forward_passes


def test_an_image_that_cannot_be_ct_is_warned_about(explainer, case, reference):
    # The MR phantom under the CT window: no value is Hounsfield units, so the explanation says so.
    _, labels, affine = case
    mr = xaiclip.phantom(mr="t2-spir")[0]
    e = explainer.explain(mr, label=labels, affine=affine, **QUICK)
    assert len(e.warnings) == 1 and "not CT in Hounsfield units" in e.warnings[0], e.warnings
    assert reference.warnings == []
