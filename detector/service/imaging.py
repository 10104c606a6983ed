"""Frame checks and decoding, heatmap quantisation, frame attachment and retraining samples.

* :func:`check_frame` — the checks a frame passes before inference, each failure a
  :class:`BadFrame` with a short ``code`` (the dead-letter reason class and metrics label) and a
  one-line reason: ``empty``, ``oversized`` (payload bytes, or pixels read from the image header
  *before* decoding, so a small file that decodes into a huge image is refused), ``schema``
  (:meth:`ingest.messages.FrameMeta.from_headers`, and the capture time within a window of the
  broker's time), ``undecodable`` (no image size in the header, truncated or corrupt JPEG/PNG,
  content-type mismatch; :func:`ingest.frames.decode_image`).
* :func:`encode_heatmap` — the anomaly map as a uint8 PNG (fast settings: zlib level 1, the "up"
  filter, run-length deflate), longer side at most ``max_side`` (``INTER_AREA``), quantised over
  ``[0, heatmap_max]`` with ``heatmap_max`` = the map's maximum, so
  ``value = png / 255 * heatmap_max`` (see :mod:`detector.messages`).
* :func:`is_sampled` — deterministic per frame id (a replayed frame makes the same choice).
* :func:`attachable_frame` — the frame as received (JPEG/PNG bytes), re-encoded as JPEG (and
  downscaled if need be) only when it is larger than the attachment limit.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from datetime import datetime, timedelta

import cv2
import numpy as np

from ingest.frames import EncodingError, decode_image
from ingest.messages import FrameMeta, FrameSchemaError, check_capture_window


class BadFrame(ValueError):
    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class CaptureWindow:
    """How far a frame's capture time may lie before / after the broker's time of the record."""

    max_age: timedelta
    max_ahead: timedelta


@dataclass
class DecodedFrame:
    meta: FrameMeta
    rgb: np.ndarray  # uint8 HxWx3 RGB
    payload: bytes


_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def image_dimensions(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from a PNG/JPEG header without decoding, or ``None`` if not found."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        w, h = struct.unpack(">II", data[16:24])
        return int(w), int(h)
    if data[:2] == b"\xff\xd8":
        i, n = 2, len(data)
        while i + 4 <= n:
            if data[i] != 0xFF:
                i += 1
                continue
            marker = data[i + 1]
            if marker == 0xFF:
                i += 1
                continue
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            (length,) = struct.unpack(">H", data[i + 2:i + 4])
            if marker in _SOF_MARKERS and i + 9 <= n:
                h, w = struct.unpack(">HH", data[i + 5:i + 9])
                return int(w), int(h)
            if marker == 0xDA:  # start of scan before any SOF: give up
                return None
            i += 2 + length
    return None


def check_frame(value: bytes | None, headers, *, max_bytes: int, max_pixels: int,
                received_at: datetime | None = None, window: CaptureWindow | None = None) -> DecodedFrame:
    """Validate and decode one frames-topic record; raises :class:`BadFrame`.

    ``received_at`` is the broker's time of the record; with a ``window``, a capture time outside
    it is a schema error.
    """
    if not value:
        raise BadFrame("empty", "empty payload")
    if len(value) > max_bytes:
        raise BadFrame("oversized", f"payload of {len(value)} bytes is above the limit of {max_bytes} bytes")
    try:
        meta = FrameMeta.from_headers(headers)
        if received_at is not None and window is not None:
            check_capture_window(meta, received_at, max_age=window.max_age, max_ahead=window.max_ahead)
    except FrameSchemaError as exc:
        raise BadFrame("schema", " ".join(str(exc).split())[:500]) from None
    # the size comes from the header, before any pixel is decoded: a small file that declares a huge
    # image (a decompression bomb) is refused here, and a file whose size cannot be read is not decoded
    dims = image_dimensions(value)
    if dims is None:
        raise BadFrame("undecodable", "no image size found in the JPEG/PNG header")
    if dims[0] < 1 or dims[1] < 1:
        raise BadFrame("undecodable", f"image header declares {dims[0]}x{dims[1]} pixels")
    if dims[0] * dims[1] > max_pixels:
        raise BadFrame("oversized", f"image of {dims[0]}x{dims[1]} pixels is above the limit of {max_pixels} pixels")
    try:
        bgr = decode_image(value, content_type=meta.content_type, strict=True)
    except EncodingError as exc:
        raise BadFrame("undecodable", str(exc)) from None
    except cv2.error as exc:  # OpenCV refuses (e.g. its own pixel limit)
        raise BadFrame("undecodable", f"OpenCV: {str(exc).strip().splitlines()[-1][:300]}") from None
    if bgr.shape[0] * bgr.shape[1] > max_pixels:
        raise BadFrame("oversized", f"image of {bgr.shape[1]}x{bgr.shape[0]} pixels is above the limit of "
                                    f"{max_pixels} pixels")
    if bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.dtype != np.uint8:
        raise BadFrame("undecodable", f"decoded to {bgr.shape} {bgr.dtype}, not 8-bit colour")
    return DecodedFrame(meta, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), value)


# Anomaly maps are smooth: the "up" filter alone with run-length deflate takes about half the CPU of
# libpng's adaptive filtering and makes smaller files (lossless either way, still a plain PNG).
# (OpenCV before 4.11 cannot choose the filter: run-length deflate only)
_HEATMAP_PNG = [cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
if hasattr(cv2, "IMWRITE_PNG_FILTER"):
    _HEATMAP_PNG += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]


def encode_heatmap(amap: np.ndarray, max_side: int = 512, png_compression: int = 1) -> tuple[bytes, float]:
    """Quantise an anomaly map to a uint8 PNG; returns ``(png bytes, heatmap_max)``."""
    m = np.asarray(amap, dtype=np.float32)
    h, w = m.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
        m = cv2.resize(m, size, interpolation=cv2.INTER_AREA)
    m = np.nan_to_num(m, nan=0.0, posinf=0.0, neginf=0.0)
    hmax = float(max(float(m.max()), 0.0)) if m.size else 0.0
    if hmax > 0.0:
        q = np.clip(np.rint(m * (255.0 / hmax)), 0, 255).astype(np.uint8)
    else:
        q = np.zeros(m.shape, np.uint8)
    ok, buf = cv2.imencode(".png", q, [cv2.IMWRITE_PNG_COMPRESSION, int(png_compression), *_HEATMAP_PNG])
    if not ok:  # pragma: no cover - OpenCV always encodes a uint8 2-D array
        raise RuntimeError("could not encode the heatmap")
    return buf.tobytes(), hmax


def dequantise_heatmap(png: bytes, heatmap_max: float) -> np.ndarray:
    q = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    return q.astype(np.float32) / 255.0 * float(heatmap_max)


def is_sampled(frame_id: str, rate: float) -> bool:
    """Whether a normal frame goes into the retraining sample (deterministic per frame id)."""
    if rate <= 0.0:
        return False
    if rate >= 1.0:
        return True
    h = int.from_bytes(hashlib.sha256(frame_id.encode("utf-8")).digest()[:8], "big")
    return h / 2.0**64 < rate


def attachable_frame(frame: DecodedFrame, max_bytes: int, jpeg_quality: int = 90) -> tuple[bytes, str]:
    """The frame bytes to attach to a result and their content type (at most ``max_bytes``)."""
    if len(frame.payload) <= max_bytes:
        return frame.payload, frame.meta.content_type
    bgr = cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR)
    while True:
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        data = buf.tobytes()
        if ok and len(data) <= max_bytes or min(bgr.shape[:2]) <= 16:
            return data, "image/jpeg"
        bgr = cv2.resize(bgr, (max(1, bgr.shape[1] // 2), max(1, bgr.shape[0] // 2)), interpolation=cv2.INTER_AREA)
