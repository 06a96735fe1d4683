"""DICOM images (pydicom): rescale slope/intercept, display window, MONOCHROME1 inversion -> [0, 1].

pydicom parses the file; nothing in it is executed. Multi-frame files (CT/MR series in one file,
cine) are refused with a message: export one frame per file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medshield.errors import DataError

try:  # pydicom ships with the core install; the guard keeps `import medshield.data` light where it is absent
    import pydicom
    from pydicom.errors import InvalidDicomError
except ImportError:  # pragma: no cover
    pydicom = None
    InvalidDicomError = ValueError

DICOM_SUFFIXES = {".dcm", ".dicom"}


def is_dicom(path: Path) -> bool:
    """``.dcm``/``.dicom`` files, or any file with the ``DICM`` magic at byte 128."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _first(value: object) -> float:
    """A DICOM value that may be multi-valued (``WindowCenter`` = ``[40, 400]``): its first number."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = list(value)[0]  # type: ignore[arg-type]
    return float(value)  # type: ignore[arg-type]


def window_linear(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """The DICOM linear VOI function (PS3.3 C.11.2.1.2.1) mapped to [0, 1] (float64)."""
    if width < 1:
        raise DataError(f"window width must be >= 1, got {width}")
    if width == 1:
        return (x >= center - 0.5).astype(np.float64)
    y = (x - (center - 0.5)) / (width - 1) + 0.5
    return np.clip(y, 0.0, 1.0)


def read_dicom(path: Path, window: tuple[float, float] | None = None) -> np.ndarray:
    """One DICOM image as float32 ``[H, W]`` (grey) or ``[H, W, 3]`` (RGB) in [0, 1].

    Modality LUT: ``stored * RescaleSlope + RescaleIntercept``. VOI: ``window`` (center, width), else the
    file's ``WindowCenter``/``WindowWidth``, else the full range the stored bits allow after rescaling.
    ``MONOCHROME1`` (bright = low values) is inverted so that bright is 1.
    """
    if pydicom is None:
        raise DataError(f"{path}: reading DICOM needs pydicom (pip install pydicom)")
    try:
        ds = pydicom.dcmread(str(path))
    except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
        raise DataError(f"{path}: not a readable DICOM file ({exc})") from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DataError(f"{path}: multi-frame DICOM ({frames} frames) is not supported; export one frame per file")
    if "PixelData" not in ds:
        raise DataError(f"{path}: DICOM file without pixel data")
    try:
        stored = ds.pixel_array
    except Exception as exc:  # pydicom raises several kinds for unsupported transfer syntaxes
        raise DataError(f"{path}: cannot decode the DICOM pixel data ({type(exc).__name__}: {exc}); "
                        "compressed files need pydicom's optional decoders (pylibjpeg, gdcm)") from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric in ("RGB", "YBR_FULL", "YBR_FULL_422"):
        if photometric != "RGB":
            from pydicom.pixels import convert_color_space

            stored = convert_color_space(stored, photometric, "RGB")
        return (np.asarray(stored, dtype=np.float32) / float(2 ** int(ds.get("BitsStored", 8)) - 1)).clip(0, 1)
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DataError(f"{path}: unsupported PhotometricInterpretation {photometric}")
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    values = stored.astype(np.float64) * slope + intercept
    if window is None and ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        window = (_first(ds.WindowCenter), _first(ds.WindowWidth))
    if window is not None:
        out = window_linear(values, *window)
    else:
        bits, signed = int(ds.get("BitsStored", 16)), int(ds.get("PixelRepresentation", 0)) == 1
        lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
        lo, hi = sorted((lo * slope + intercept, hi * slope + intercept))
        out = np.clip((values - lo) / (hi - lo), 0, 1)
    return (1.0 - out if photometric == "MONOCHROME1" else out).astype(np.float32)
