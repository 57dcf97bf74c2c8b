# Type stubs of the native module (python/src/lib.rs); the documented API is xaiclip/__init__.py.
from typing import Any, Callable, Optional

import numpy as np

__version__: str

def read_image(path: str) -> tuple[np.ndarray, np.ndarray]: ...
def phantom(seed: int = 7, size: int = 256, slices: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...

class Explainer:
    def __init__(
        self,
        model: Optional[str] = None,
        clip: Optional[str] = None,
        coop: Optional[str] = None,
        *,
        device: str = "auto",
        precision: str = "f32",
        batch: str = "auto",
        size: Optional[int] = None,
        modality: str = "ct",
        window: Optional[str] = None,
        prompt: Optional[str] = None,
        no_coop: bool = False,
        roi_threshold: str = "otsu",
    ) -> None: ...
    @property
    def device(self) -> str: ...
    @property
    def model_size(self) -> int: ...
    def explain(
        self,
        image: Any,
        organ: str,
        method: str,
        roi: Optional[str],
        label: Any,
        affine: Optional[np.ndarray],
        slice: Any,
        label_ids: str,
        options: dict[str, Any],
        progress: Optional[Callable[[int, int], Any]],
    ) -> Explanation: ...
    def bench(
        self,
        image: Any,
        organ: str,
        methods: list[str],
        roi: Optional[str],
        label: Any,
        affine: Optional[np.ndarray],
        slice: Any,
        label_ids: str,
        repeat: int,
        warmup: int,
        options: dict[str, Any],
        progress: Optional[Callable[[int, int], Any]],
    ) -> str: ...

class Explanation:
    saliency_volume: np.ndarray
    saliency_model: np.ndarray
    roi: np.ndarray
    m0: np.ndarray
    truth: Optional[np.ndarray]
    roi_probability: Optional[np.ndarray]
    model_input: np.ndarray
    result_json: str
    slice: int
    slice_axis: int
    organ: str
    method: str
    roi_mode: str
    forward_passes: int
    seconds: float
    settings_json: str
    def to_nifti(self, path: str) -> None: ...
    def overlay(self, path: str) -> None: ...
