"""Strict request decoding: PNG/JPEG (Pillow), DICOM (pydicom) and JSON batches -> float32 [N,C,H,W].

Every malformed input raises :class:`InputError` carrying an HTTP status (400 unparseable, 413 too
large, 415 unsupported format, 422 well-formed but unusable) and a one-line message; nothing here
resizes an image. Channel rules: a grey image is replicated to RGB for a 3-channel model; an RGB
image is accepted by a grey model only when its three channels are identical (a grey image saved
as RGB), otherwise it is rejected (no implicit luma conversion).
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
import struct
import warnings
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medshield.errors import MedShieldError

PNG_MAGIC, JPEG_MAGIC = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"
PIL_MODES = ("1", "L", "P", "PA", "LA", "RGB", "RGBA", "I;16", "I;16B", "I;16L", "I")
PNG_COMPRESSED_CHUNKS = (b"zTXt", b"iTXt", b"iCCP")  # ancillary chunks Pillow inflates at open (<= 1 MB each)
MAX_COMPRESSED_CHUNKS = 4
DICOM_HEADER_ALLOWANCE = 1 << 20  # bytes of DICOM elements allowed besides the pixel data


class InputError(MedShieldError):
    """A request the server refuses, with the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class InputSpec:
    """What the served model accepts, plus decoding limits."""

    channels: int
    size: int
    max_batch: int = 256
    max_side: int = 4096

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.size, self.size)

    @property
    def max_pixel_bytes(self) -> int:
        """The most decoded bytes one accepted image can take (RGBA, 16 bits per sample)."""
        return self.size * self.size * 4 * 2


def conform(arr: np.ndarray, spec: InputSpec) -> torch.Tensor:
    """Check a float array ``[N,C,H,W]`` against ``spec`` (finite, in [0, 1], size, channels)."""
    if arr.ndim != 4:
        raise InputError(422, f"images must have shape [N,C,H,W] or [N,H,W], got {list(arr.shape)}")
    n, c, h, w = arr.shape
    if n == 0:
        raise InputError(422, "the batch is empty")
    if n > spec.max_batch:
        raise InputError(413, f"batch of {n} images exceeds the limit of {spec.max_batch} per request")
    if (h, w) != (spec.size, spec.size):
        raise InputError(422, f"images must be {spec.size}x{spec.size} pixels (HxW), got {h}x{w}; "
                              "the server does not resize, resize on the client")
    if not np.isfinite(arr).all():
        raise InputError(422, "images contain NaN or infinite values")
    if arr.min() < 0.0 or arr.max() > 1.0:
        raise InputError(422, f"pixel values must lie in [0, 1], got range [{arr.min():.4g}, {arr.max():.4g}]")
    return torch.from_numpy(np.array(match_channels(arr, spec.channels), dtype=np.float32, order="C"))


def match_channels(arr: np.ndarray, channels: int) -> np.ndarray:
    c = arr.shape[1]
    if c == channels:
        return arr
    if c == 1 and channels == 3:
        return np.repeat(arr, 3, axis=1)
    if c == 3 and channels == 1:
        if np.array_equal(arr[:, 0], arr[:, 1]) and np.array_equal(arr[:, 0], arr[:, 2]):
            return arr[:, :1]
        raise InputError(422, "the model takes grey images but got RGB with differing channels; "
                              "convert to grey on the client")
    raise InputError(422, f"the model takes {channels}-channel images, got {c} channels")


def decode_json_batch(payload: Any, spec: InputSpec, check_bools: bool = True) -> torch.Tensor:
    """``{"images": nested lists [N,C,H,W] or [N,H,W]}`` or ``{"array": {"shape", "dtype": "float32",
    "data": base64 little-endian}}`` -> float32 tensor. Booleans are refused, never read as 1.0/0.0."""
    if not isinstance(payload, dict):
        raise InputError(422, 'the JSON body must be an object with "images" or "array"')
    keys = {"images", "array"} & set(payload)
    if len(keys) != 1:
        raise InputError(422, 'the JSON body needs exactly one of "images" (nested lists) or "array" (base64)')
    arr = nested_lists(payload["images"], check_bools) if "images" in keys else base64_array(payload["array"], spec)
    if arr.ndim == 3:
        arr = arr[:, None]
    return conform(arr, spec)


def has_bool(images: Any) -> bool:
    """Whether nested lists hold a JSON ``true``/``false`` (NumPy would read it as 1.0/0.0)."""
    stack = [images]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, bool):
            return True
    return False


def nested_lists(images: Any, check_bools: bool = True) -> np.ndarray:
    """``check_bools=False`` skips the scan for ``true``/``false`` (when the raw body holds neither)."""
    if not isinstance(images, list):
        raise InputError(422, '"images" must be a list of images (nested lists of numbers)')
    if check_bools and has_bool(images):
        raise InputError(422, '"images" holds JSON true/false; pixel values must be numbers in [0, 1]')
    try:
        arr = np.array(images)
    except (ValueError, TypeError, OverflowError):
        raise InputError(422, '"images" is ragged: every image must have the same shape') from None
    if arr.dtype.kind not in "iuf":
        raise InputError(422, f'"images" must hold only numbers, got {arr.dtype.kind!r}-kind values')
    if arr.ndim not in (3, 4):
        raise InputError(422, f'"images" must have shape [N,C,H,W] or [N,H,W], got {list(arr.shape)}')
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return arr.astype(np.float32)


def base64_array(spec_obj: Any, spec: InputSpec) -> np.ndarray:
    if not isinstance(spec_obj, dict) or set(spec_obj) - {"shape", "dtype", "data"}:
        raise InputError(422, '"array" must be {"shape": [...], "dtype": "float32", "data": "<base64>"}')
    shape, dtype, data = spec_obj.get("shape"), spec_obj.get("dtype", "float32"), spec_obj.get("data")
    if dtype != "float32":
        raise InputError(422, f'"array.dtype" must be "float32", got {dtype!r}')
    if not (isinstance(shape, list) and len(shape) in (3, 4)
            and all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= 1 << 20 for s in shape)):
        raise InputError(422, '"array.shape" must be 3 or 4 non-negative integers ([N,H,W] or [N,C,H,W])')
    if not isinstance(data, str):
        raise InputError(422, '"array.data" must be a base64 string')
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(400, '"array.data" is not valid base64') from None
    count = math.prod(shape)
    if len(raw) != 4 * count:
        raise InputError(422, f'"array.data" holds {len(raw)} bytes but shape {shape} needs {4 * count}')
    return np.frombuffer(raw, dtype="<f4").reshape(shape)


def decode_image_file(data: bytes, spec: InputSpec) -> torch.Tensor:
    """One PNG, JPEG or DICOM file -> ``[1,C,H,W]``; the format is read from the bytes, not the name."""
    if not data:
        raise InputError(422, "the uploaded file is empty")
    if data.startswith(PNG_MAGIC) or data.startswith(JPEG_MAGIC):
        arr = pil_array(data, spec)
    elif data[128:132] == b"DICM":
        arr = dicom_array(data, spec)
    else:
        raise InputError(415, "unsupported image format: send PNG, JPEG or DICOM (Part 10 file with 'DICM' preamble)")
    if arr.ndim == 2:
        arr = arr[None]
    return conform(arr[None], spec)


def png_chunks(data: bytes, spec: InputSpec) -> None:
    """Walk a PNG's chunk headers (no decompression): refuse 16-bit colour (Pillow would cut it to 8
    bits) and more than a few compressed text/ICC chunks (each inflated at open)."""
    pos, compressed = len(PNG_MAGIC), 0
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IHDR" and length >= 13:
            depth, colour = data[pos + 16], data[pos + 17]
            if depth == 16 and colour in (2, 4, 6):
                raise InputError(415, "16-bit colour PNG is not supported (it would be cut to 8 bits); "
                                      "send 8-bit RGB or 16-bit grey")
        compressed += kind in PNG_COMPRESSED_CHUNKS
        if compressed > MAX_COMPRESSED_CHUNKS:
            raise InputError(413, f"PNG holds more than {MAX_COMPRESSED_CHUNKS} compressed text/ICC chunks")
        if kind == b"IEND":
            return
        pos += 12 + length


def check_header(width: int, height: int, mode: str, frames: int, spec: InputSpec) -> None:
    """What an image header declares, checked before a pixel is decoded: side limit, the served
    size (the server does not resize), one frame, a known mode, decoded bytes bounded."""
    check_side(width, height, spec)
    if (height, width) != (spec.size, spec.size):
        raise InputError(422, f"images must be {spec.size}x{spec.size} pixels (HxW), got {height}x{width}; "
                              "the server does not resize, resize on the client")
    if frames != 1:
        raise InputError(422, f"the image has {frames} frames; send one frame")
    if mode not in PIL_MODES:
        raise InputError(415, f"unsupported image mode {mode!r}; send 8/16-bit grey or 8-bit RGB")
    declared = width * height * 4 * (2 if mode.startswith("I") else 1)
    if declared > spec.max_pixel_bytes:
        raise InputError(413, f"the image would decode to {declared} bytes (limit {spec.max_pixel_bytes})")


def pil_array(data: bytes, spec: InputSpec) -> np.ndarray:
    """8-bit images scale by 1/255, 16-bit grey by 1/65535; alpha must be fully opaque. The header
    (size, mode, frames) is checked before any pixel is decoded."""
    from PIL import Image

    if data.startswith(PNG_MAGIC):
        png_chunks(data, spec)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's DecompressionBombWarning: our own check is stricter
            with Image.open(io.BytesIO(data), formats=["PNG", "JPEG"]) as img:
                check_header(*img.size, img.mode, int(getattr(img, "n_frames", 1) or 1), spec)
                img.load()
                if img.mode in ("P", "PA"):
                    img = img.convert("RGBA")
                if img.mode == "1":
                    img = img.convert("L")
                arr = np.asarray(img)
                mode = img.mode
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - a parser of untrusted bytes: any failure means a bad file
        raise InputError(400, f"corrupt or unreadable image: {first_line(exc)}") from None
    if mode in ("L", "RGB"):
        arr = arr.astype(np.float32) / 255.0
    elif mode in ("I;16", "I;16B", "I;16L", "I"):
        if mode == "I" and (arr.min() < 0 or arr.max() > 65535):
            raise InputError(422, "32-bit integer images are not supported; send 8- or 16-bit")
        arr = arr.astype(np.float32) / 65535.0
    elif mode in ("LA", "RGBA"):
        if (arr[..., -1] != 255).any():
            raise InputError(422, "images with transparency are not supported; send an opaque image")
        arr = arr[..., :-1].astype(np.float32) / 255.0
        arr = arr[..., 0] if mode == "LA" else arr
    else:
        raise InputError(415, f"unsupported image mode {mode!r}; send 8/16-bit grey or 8-bit RGB")
    return arr.transpose(2, 0, 1) if arr.ndim == 3 else arr


def bounded_inflate(data: bytes, limit: int) -> bytes:
    """Raw-deflate ``data`` to at most ``limit`` bytes (CPU and memory bounded by ``limit``)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise InputError(400, f"corrupt deflated DICOM: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise InputError(413, f"the deflated DICOM inflates beyond {limit} bytes")
    return out


def undeflate_dicom(data: bytes, spec: InputSpec) -> bytes:
    """A Deflated Explicit VR Little Endian file rewritten as plain Explicit VR Little Endian, its
    inflation bounded by the largest dataset an accepted image needs; other files unchanged."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

    fp = io.BytesIO(data)
    fp.seek(132)
    meta = read_dataset(fp, is_implicit_VR=False, is_little_endian=True,
                        stop_when=lambda tag, vr, length: tag.group != 2)
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return data
    from pydicom.dataset import FileMetaDataset

    inflated = bounded_inflate(data[fp.tell():], spec.max_pixel_bytes + DICOM_HEADER_ALLOWANCE)
    plain = FileMetaDataset(meta)
    plain.TransferSyntaxUID = ExplicitVRLittleEndian
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    write_file_meta_info(head, plain, enforce_standard=False)
    return data[:132] + head.getvalue() + inflated


def dicom_array(data: bytes, spec: InputSpec) -> np.ndarray:
    """Single-frame DICOM: stored values scaled by ``2**BitsStored - 1`` (signed data shifted first);
    MONOCHROME1 inverted so that bright means dense as in MONOCHROME2; RGB taken as is. Deflate
    inflation is bounded and Rows x Columns x frames x bits checked before the pixel data is decoded;
    stored values outside BitsStored are refused, never clipped."""
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(undeflate_dicom(data, spec)))
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        samples, allocated = int(getattr(ds, "SamplesPerPixel", 1) or 1), int(getattr(ds, "BitsAllocated", 16) or 16)
        check_header(cols, rows, "L", frames, spec)
        if samples not in (1, 3) or allocated not in (8, 16):
            raise InputError(415, f"DICOM with SamplesPerPixel={samples}, BitsAllocated={allocated} is not supported")
        bits = int(ds.BitsStored)
        if not 1 <= bits <= allocated:
            raise InputError(422, f"DICOM BitsStored={bits} is not supported (1-{allocated})")
        signed = int(getattr(ds, "PixelRepresentation", 0)) == 1
        stored = native_values(ds, rows * cols * samples, allocated, signed)
        pixels = ds.pixel_array
        photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom raises struct.error, KeyError, ... on malformed files
        raise InputError(400, f"corrupt or unsupported DICOM: {first_line(exc)}") from None
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    for values in (stored, pixels):  # the bytes as sent (pydicom masks bits above BitsStored) and as decoded
        if values is not None and values.size and (int(values.min()) < low or int(values.max()) > high):
            raise InputError(422, f"DICOM stored values span [{int(values.min())}, {int(values.max())}], outside "
                                  f"BitsStored={bits} ([{low}, {high}]); refusing rather than masking or clipping")
    arr = (pixels.astype(np.float64) - low) / (2**bits - 1)
    arr = arr.astype(np.float32)
    if photometric == "MONOCHROME1":
        arr = 1.0 - arr
    elif photometric == "RGB" and arr.ndim == 3:
        arr = arr.transpose(2, 0, 1)
    elif photometric != "MONOCHROME2":
        raise InputError(415, f"DICOM PhotometricInterpretation {photometric!r} is not supported")
    return arr


ADDRESS = re.compile(r"\s*<[^<>]*\bat 0x[0-9a-fA-F]+>|\s*\b0x[0-9a-fA-F]{6,}\b")


def native_values(ds: Any, count: int, allocated: int, signed: bool) -> np.ndarray | None:
    """The stored values of uncompressed little-endian pixel data, as sent (None when compressed)."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None or syntax.is_compressed or not syntax.is_little_endian or "PixelData" not in ds:
        return None
    dtype = np.dtype(f"<{'i' if signed else 'u'}{allocated // 8}")
    raw = ds.PixelData
    if len(raw) < count * dtype.itemsize:
        raise InputError(400, f"DICOM pixel data holds {len(raw)} bytes, {count * dtype.itemsize} expected")
    return np.frombuffer(raw, dtype=dtype, count=count)


def first_line(exc: BaseException | str) -> str:
    """An exception's first line, at most 200 characters, with no object reprs or memory addresses."""
    text = ADDRESS.sub("", str(exc)).strip()
    return (text.splitlines()[0][:200] if text else "") or (type(exc).__name__ if isinstance(exc, BaseException)
                                                           else "unknown error")


def check_side(width: int, height: int, spec: InputSpec) -> None:
    if width > spec.max_side or height > spec.max_side:
        raise InputError(413, f"image of {width}x{height} exceeds the {spec.max_side}-pixel side limit")
    if width < 1 or height < 1:
        raise InputError(422, f"image of {width}x{height} has no pixels")
