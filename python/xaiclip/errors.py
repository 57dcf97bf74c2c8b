"""xaiclip's own exceptions. Each is also the builtin a caller would catch for its kind of failure."""


class XaiclipError(Exception):
    """Base of the exceptions below."""


class OrganAbsentError(XaiclipError, ValueError):
    """The organ is not on the slice or in the volume: nothing to explain."""


class RoiMissError(XaiclipError, ValueError):
    """The ROI misses the organ the U-Net predicts: explaining it would explain the wrong place.
    Use roi="seg" or roi="clip+seg", or roi_fallback="seg"."""


class UnsupportedError(XaiclipError, ValueError):
    """Well-formed input the engine does not handle (a data type, dimensionality, transfer syntax)."""


class DeviceUnavailableError(XaiclipError, RuntimeError):
    """The compute device asked for cannot be used (no driver, no GPU, built without kernels)."""
