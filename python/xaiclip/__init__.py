"""xaiclip: ROI-guided perturbation explanations for medical image segmentation (XAI-CLIP).

The engine is Rust (the ``xaiclip`` crate); this package is its Python face. Images are numpy arrays
indexed ``[i, j, k]`` as nibabel's ``get_fdata()`` returns them (any dtype of float32, float64, int16,
uint8, uint16, int32; C or Fortran order; views), with a 4x4 voxel-to-world affine, or paths to NIfTI
files and DICOM series folders. Every option has the name and default of the ``xaiclip`` command line
(``xaiclip explain --help``): ``--occlusion-window 16`` is ``occlusion_window=16``.

    >>> import xaiclip
    >>> ct, labels, affine = xaiclip.phantom()          # the demo case
    >>> e = xaiclip.Explainer(device="cpu").explain(ct, "liver", "occlusion", affine=affine, label=labels)
    >>> e.saliency.shape == ct.shape[:2], e.metrics["dice"] > 0
    (True, True)
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable, Iterable, Optional, Union

import numpy as np

from . import _native
from .errors import (
    DeviceUnavailableError,
    OrganAbsentError,
    RoiMissError,
    UnsupportedError,
    XaiclipError,
)

__version__ = _native.__version__
__all__ = [
    "Explainer",
    "Explanation",
    "read_image",
    "phantom",
    "bench",
    "XaiclipError",
    "OrganAbsentError",
    "RoiMissError",
    "UnsupportedError",
    "DeviceUnavailableError",
]

METHODS = ("occlusion", "rise", "lime", "kernelshap")

Image = Union[np.ndarray, str, os.PathLike]
Progress = Union[bool, Callable[[int, int], Any], None]


def read_image(path: Union[str, os.PathLike]) -> tuple[np.ndarray, np.ndarray]:
    """Reads a NIfTI file (.nii, .nii.gz) or a folder holding one DICOM series.

    Returns ``(array, affine)``: float32 voxels indexed ``[i, j, k]`` (nibabel's order, Fortran
    layout) and the 4x4 voxel-to-RAS+ affine. Raises FileNotFoundError, ValueError (corrupt or
    truncated files, with the file and the problem) or UnsupportedError.
    """
    return _native.read_image(os.fspath(path))


def phantom(
    seed: int = 7, size: int = 256, slices: int = 32, mr: Optional[str] = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The synthetic abdominal CT phantom: ``(ct, labels, affine)``, indexed ``[i, j, k]``.

    The defaults are the bundled demo case of ``xaiclip demo`` and ``xaiclip bench --demo``; ``xaiclip
    phantom --seed S --out DIR`` writes the same volume as NIfTI. Labels are FLARE22 ids (1 liver, 2 right
    kidney, 3 spleen, ...). ``mr="t1-in-phase"``, ``"t1-opposed-phase"`` or ``"t2-spir"`` gives the same
    anatomy as MR of that CHAOS sequence (``xaiclip phantom --mr``); explain it with ``modality="mr"``.
    """
    return _native.phantom(seed, size, slices, mr)


def _path_or_array(value: Any) -> Any:
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    if value is None or isinstance(value, np.ndarray):
        return value
    raise TypeError(f"expected a numpy array or a path, got {type(value).__name__}")


def _affine(affine: Any) -> Optional[np.ndarray]:
    if affine is None:
        return None
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4):
        raise ValueError(f"affine: expected a 4x4 matrix, got shape {a.shape}")
    return a


class _Bar:
    """A text progress bar on stderr (tqdm's when it is installed)."""

    def __init__(self, what: str):
        self.what, self.tqdm, self.last = what, None, -1
        try:
            from tqdm.auto import tqdm

            self.tqdm = tqdm(desc=what, unit="pass")
        except ImportError:
            pass

    def __call__(self, done: int, total: int) -> None:
        if self.tqdm is not None:
            self.tqdm.total = max(total, done)
            self.tqdm.n = done
            self.tqdm.refresh()
            return
        percent = 100 * done // max(total, 1)
        if percent != self.last:
            self.last = percent
            filled = 30 * done // max(total, 1)
            sys.stderr.write(f"\r{self.what} [{'=' * filled}{' ' * (30 - filled)}] {done}/{total}")
            sys.stderr.flush()

    def close(self) -> None:
        if self.tqdm is not None:
            self.tqdm.close()
        elif self.last >= 0:
            sys.stderr.write("\n")


def _with_progress(progress: Progress, what: str, run: Callable[[Optional[Callable[[int, int], Any]]], Any]) -> Any:
    if progress is True:
        bar = _Bar(what)
        try:
            return run(bar)
        finally:
            bar.close()
    if progress is False or progress is None:
        return run(None)
    if not callable(progress):
        raise TypeError("progress: expected True, False or a callable(done, total)")
    return run(progress)


class Explanation:
    """One explanation of one slice.

    Maps on the image's grid follow the image's ``[i, j, k]`` indexing; ``saliency_model``,
    ``model_input``, ``roi``, ``roi_probability``, ``m0`` and ``truth`` are on the square model grid,
    ``[row, column]`` as a radiologist reads the slice (row 0 anterior, column 0 the patient's right).
    """

    def __init__(self, native: Any):
        self._native = native

    @property
    def saliency_volume(self) -> np.ndarray:
        """The saliency on the image's grid: the map on the explained slice, zero elsewhere (the data
        of ``xaiclip explain``'s saliency.nii.gz)."""
        return self._native.saliency_volume

    @property
    def saliency(self) -> np.ndarray:
        """The saliency on the explained slice's own pixels, indexed as the image: ``saliency_volume[:, :,
        slice]`` when slices stack along k (``slice_axis``), and a 2-D image's own grid."""
        return np.take(self._native.saliency_volume, self.slice, axis=self._native.slice_axis)

    @property
    def saliency_model(self) -> np.ndarray:
        """The saliency on the model grid."""
        return self._native.saliency_model

    @property
    def roi(self) -> np.ndarray:
        """Pixels that could be perturbed (model grid, bool)."""
        return self._native.roi

    @property
    def roi_probability(self) -> Optional[np.ndarray]:
        """CLIP's organ probability map (model grid), or None outside the CLIP ROI modes."""
        return self._native.roi_probability

    @property
    def truth(self) -> Optional[np.ndarray]:
        """The organ's ground truth (model grid, bool), or None without labels."""
        return self._native.truth

    @property
    def m0(self) -> np.ndarray:
        """M0: the U-Net's unperturbed prediction of the organ (model grid, bool)."""
        return self._native.m0

    @property
    def model_input(self) -> np.ndarray:
        """The slice as the U-Net saw it: windowed to [0, 1] on the model grid."""
        return self._native.model_input

    @property
    def metrics(self) -> dict:
        """report.json's ``result``: seconds, forward passes, ROI fraction and coverage, and with labels
        Dice/IoU/AUROC/pointing game, deletion/insertion AUC, the agreement and faithfulness blocks."""
        return json.loads(self._native.result_json)

    @property
    def warnings(self) -> list:
        """What looked wrong about the image for the model: e.g. values that cannot be CT under a CT
        window (an MR image? pass ``modality="mr"``). Empty when nothing did."""
        return self._native.warnings

    slice = property(lambda self: self._native.slice, doc="The slice explained (index along slice_axis).")
    slice_axis = property(lambda self: self._native.slice_axis, doc="The voxel axis slices stack along.")
    organ = property(lambda self: self._native.organ, doc="The organ's name.")
    method = property(lambda self: self._native.method, doc="The method's name.")
    roi_mode = property(lambda self: self._native.roi_mode, doc="The ROI mode's name.")
    forward_passes = property(lambda self: self._native.forward_passes, doc="U-Net forward passes.")
    seconds = property(lambda self: self._native.seconds, doc="Seconds (CLIP ROI included, metrics not).")

    @property
    def settings(self) -> dict:
        """The settings of the method it ran, as report.json records them (``{"rise": {"masks": 1000, ...}, ...}``)."""
        return json.loads(self._native.settings_json)

    def to_nifti(self, path: Union[str, os.PathLike]) -> None:
        """Writes ``saliency_volume`` as NIfTI with the image's header and affine, atomically."""
        self._native.to_nifti(os.fspath(path))

    def overlay(self, path: Union[str, os.PathLike]) -> None:
        """Writes ``xaiclip explain``'s overlay.png: heat map over the slice, ROI outline cyan (ROI
        modes), ground truth green."""
        self._native.overlay(os.fspath(path))

    def __repr__(self) -> str:
        return (
            f"<Explanation {self.method} ({self.roi_mode}) of {self.organ} on slice {self.slice}: "
            f"{self.forward_passes} forward passes, {self.seconds:.2f}s>"
        )


class Explainer:
    """The engine: a U-Net (and CLIP, loaded when first needed) on one device.

    Arguments have the ``xaiclip`` command line's names and defaults:

    - ``model``: a MONAI BasicUNet folder (model.safetensors + config.json) or an nnU-Net v2 result
      folder (plans.json, dataset.json, fold_K/checkpoint_final.pth; organs are then its classes);
      None: the bundled one.
    - ``clip``, ``coop``: CLIP (transformers CLIPModel) and CoOp folders; None: the bundled ones.
    - ``device``: "auto" (a GPU when usable), "cpu", "cuda" or "cuda:N". ``precision``: "f32", "tf32",
      "bf16" (GPU convolutions; on a CPU with AVX512-BF16 too, on AMX tiles where it has them; on a
      CPU, "tf32" is f32 on Winograd F(4x4, 3x3), maps within ~1e-6 of max of f32).
      ``batch``: perturbed images per forward pass, a number or "auto".
    - ``size``: side of the square model grid (None: the model's own; required when it states none).
    - ``modality``: "ct" (HU ``window``, default "-160,240") or "mr" (0.5-99.5th percentiles); neither
      given: the model's own normalisation where it has one (an nnU-Net's CTNormalization).
    - ``prompt`` / ``no_coop``: a hand-written prompt, or the template prompts, instead of CoOp.
    - ``roi_threshold``: "otsu", "fixed:VALUE" or "top:FRACTION" on the CLIP organ map.
    - ``mirror``: nnU-Net's test-time mirroring (``--mirror``), as nnUNetPredictor does by default; 4x
      the forwards in 2-D. nnU-Net models only.

    The GIL is released while it works, so other Python threads run; Ctrl-C stops a run at its next
    batch with KeyboardInterrupt.
    """

    def __init__(
        self,
        model: Optional[Union[str, os.PathLike]] = None,
        clip: Optional[Union[str, os.PathLike]] = None,
        coop: Optional[Union[str, os.PathLike]] = None,
        *,
        device: str = "auto",
        precision: str = "f32",
        batch: Union[int, str] = "auto",
        size: Optional[int] = None,
        modality: Optional[str] = None,
        window: Optional[Union[str, tuple]] = None,
        prompt: Optional[str] = None,
        no_coop: bool = False,
        roi_threshold: str = "otsu",
        mirror: bool = False,
    ):
        fs = lambda p: None if p is None else os.fspath(p)  # noqa: E731
        if isinstance(window, tuple):
            window = ",".join(str(v) for v in window)
        self._native = _native.Explainer(
            fs(model),
            fs(clip),
            fs(coop),
            device=device,
            precision=precision,
            batch=str(batch),
            size=size,
            modality=modality,
            window=window,
            prompt=prompt,
            no_coop=no_coop,
            roi_threshold=roi_threshold,
            mirror=mirror,
        )

    @property
    def device(self) -> str:
        """The device in words ("cpu (2 threads)", a GPU's name)."""
        return self._native.device

    @property
    def model_size(self) -> int:
        """Side of the square model grid."""
        return self._native.model_size

    def explain(
        self,
        image: Image,
        organ: str = "liver",
        method: str = "occlusion",
        roi: Optional[str] = None,
        label: Optional[Image] = None,
        *,
        affine: Any = None,
        slice: Union[int, str, None] = None,
        label_ids: str = "flare22",
        progress: Progress = False,
        **options: Any,
    ) -> Explanation:
        """Explains the U-Net's segmentation of ``organ`` on one slice by perturbation.

        - ``image``: a numpy volume ``[i, j, k]`` (or a 2-D slice ``[i, j]``) with ``affine`` (default:
          identity, 1 mm voxels), or a path (NIfTI file, DICOM folder) that carries its own.
        - ``method``: occlusion, rise, lime or kernelshap. ``roi``: none, clip (default), seg, bbox,
          clip+seg.
        - ``label``: ground truth (array on the image's grid, or a path; ``label_ids`` "flare22",
          "totalseg" (TotalSegmentator's CT task), "totalseg-mr" (its MR task), or "model" for the model's own ids, e.g. an nnU-Net dataset.json's): enables Dice/IoU/AUROC, ROI coverage and ``slice="organ-center"``.
        - ``slice``: an index along k, or "organ-center" (default for volumes; needs ``label``).
        - ``progress``: True for a progress bar on stderr, or a callable ``(done, total)`` called after
          each batch of forward passes (an exception it raises stops the run and propagates).
        - ``**options``: the command line's explainer options by name, e.g. ``occlusion_window=16``,
          ``occlusion_stride=8``, ``masks=2000``, ``grid=7``, ``samples=500``, ``score="dice"``,
          ``baseline="mean"``, ``segmenter="felzenszwalb"``, ``margin_mm=10``, ``preset="paper"``,
          ``seed=3``, ``same_budget=True``, ``roi_fallback="seg"`` (``xaiclip explain --help`` lists them).

        Raises ValueError for bad input (FileNotFoundError for missing files), OrganAbsentError,
        RoiMissError when the ROI misses the U-Net's own prediction, MemoryError, KeyboardInterrupt.
        """
        what = f"{method} ({roi or 'clip'})"
        native = _with_progress(
            progress,
            what,
            lambda cb: self._native.explain(
                _path_or_array(image),
                organ,
                method,
                roi,
                _path_or_array(label),
                _affine(affine),
                slice,
                label_ids,
                options,
                cb,
            ),
        )
        return Explanation(native)

    def bench(
        self,
        image: Image,
        organ: str = "liver",
        methods: Iterable[str] = METHODS,
        roi: Optional[str] = None,
        label: Optional[Image] = None,
        *,
        affine: Any = None,
        slice: Union[int, str, None] = None,
        label_ids: str = "flare22",
        repeat: int = 1,
        warmup: int = 0,
        progress: Progress = False,
        as_frame: Optional[bool] = None,
        **options: Any,
    ):
        """Each method in full-image and ``roi`` mode on one slice, as ``xaiclip bench`` runs them.

        Returns one dict per run (report.json's ``result`` plus the slice), or a pandas DataFrame of the
        flat columns when pandas is installed (``as_frame=False`` keeps the dicts). Arguments as
        :meth:`explain`; ``repeat`` times each row that often and keeps the median seconds, after
        ``warmup`` untimed runs (the first run, timed or not, computes the maps and metrics).
        """
        methods = [methods] if isinstance(methods, str) else list(methods)
        text = _with_progress(
            progress,
            "bench",
            lambda cb: self._native.bench(
                _path_or_array(image),
                organ,
                methods,
                roi,
                _path_or_array(label),
                _affine(affine),
                slice,
                label_ids,
                repeat,
                warmup,
                options,
                cb,
            ),
        )
        rows = json.loads(text)
        if as_frame is False:
            return rows
        try:
            import pandas as pd
        except ImportError:
            if as_frame:
                raise
            return rows
        flat = [{k: v for k, v in r.items() if not isinstance(v, (dict, list))} for r in rows]
        return pd.DataFrame(flat)


def bench(
    image: Optional[Image] = None,
    organ: str = "liver",
    methods: Iterable[str] = METHODS,
    roi: Optional[str] = None,
    label: Optional[Image] = None,
    *,
    demo: bool = False,
    device: str = "auto",
    size: Optional[int] = None,
    **kwargs: Any,
):
    """``xaiclip bench`` from Python: builds an :class:`Explainer` and runs :meth:`Explainer.bench`.

    ``demo=True`` uses the bundled phantom and its labels (as ``xaiclip bench --demo``).
    """
    if demo:
        if image is not None or label is not None:
            raise ValueError("demo=True takes no image or label")
        image, label, kwargs["affine"] = phantom()
    elif image is None:
        raise ValueError("bench: pass an image, or demo=True")
    explainer = Explainer(device=device, size=size)
    return explainer.bench(image, organ, methods, roi, label, **kwargs)
