"""A captured frame, and the image encodings used on the wire (JPEG or PNG).

Pixels travel as ordinary image files: ``image/jpeg`` (lossy, quality configurable, the default
for live cameras) or ``image/png`` (lossless: the consumer decodes exactly the pixels that were
captured).  :func:`decode_image` is the inverse used by consumers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

import cv2
import numpy as np

Encoding = Literal["jpeg", "png"]
CONTENT_TYPES: dict[str, str] = {"jpeg": "image/jpeg", "png": "image/png"}
_EXT_CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}


class EncodingError(ValueError):
    """An image could not be encoded or decoded."""


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Frame:
    """One captured image and what the source knows about it.

    ``image`` is an 8-bit array, ``HxWx3`` BGR (OpenCV order) or ``HxW`` grey.  ``encoded`` /
    ``content_type`` are set when the source already holds the frame as a JPEG/PNG file that can
    be sent as it is (folder replay with ``passthrough``).  ``info`` carries source-specific
    extras (e.g. the simulator's ground truth); it is not sent.
    """

    image: np.ndarray | None
    captured_at: datetime = field(default_factory=utcnow)
    part_id: str | None = None
    product: str | None = None
    encoded: bytes | None = None
    content_type: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


def content_type_for_path(path: str) -> str | None:
    """``image/jpeg`` / ``image/png`` for a file name with that extension, else ``None``."""
    lower = path.lower()
    for ext, ctype in _EXT_CONTENT_TYPES.items():
        if lower.endswith(ext):
            return ctype
    return None


def encode_image(image: np.ndarray, encoding: Encoding = "jpeg", *, jpeg_quality: int = 90,
                 png_compression: int = 1) -> tuple[bytes, str]:
    """Encode an 8-bit BGR/grey image; returns ``(bytes, content type)``."""
    if image is None or not isinstance(image, np.ndarray) or image.size == 0:
        raise EncodingError("empty image")
    if image.dtype != np.uint8:
        raise EncodingError(f"expected an 8-bit image, got {image.dtype}")
    if encoding == "jpeg":
        if not 1 <= jpeg_quality <= 100:
            raise EncodingError("jpeg_quality must be within 1..100")
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    elif encoding == "png":
        ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, int(png_compression)])
    else:
        raise EncodingError(f"unknown encoding {encoding!r} (jpeg or png)")
    if not ok:
        raise EncodingError(f"OpenCV could not encode a {image.shape} image as {encoding}")
    return buf.tobytes(), CONTENT_TYPES[encoding]


_JPEG_SOI, _JPEG_EOI = b"\xff\xd8", b"\xff\xd9"
_PNG_SIGNATURE, _PNG_IEND = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"


def sniff_content_type(data: bytes) -> str | None:
    """``image/jpeg`` or ``image/png`` from the magic bytes, else ``None``."""
    if data.startswith(_JPEG_SOI):
        return "image/jpeg"
    if data.startswith(_PNG_SIGNATURE):
        return "image/png"
    return None


def check_complete(data: bytes, content_type: str | None = None) -> str:
    """Check that ``data`` is a whole JPEG/PNG file (not truncated); return its content type.

    OpenCV decodes a truncated JPEG without complaint (the missing rows come out grey), so
    consumers check the end markers first: JPEG must end with EOI (``FF D9``, trailing zero
    padding allowed), PNG with its ``IEND`` chunk.  Raises :class:`EncodingError`.
    """
    if not data:
        raise EncodingError("empty payload")
    sniffed = sniff_content_type(data)
    if sniffed is None:
        raise EncodingError("payload is neither JPEG nor PNG (bad magic bytes)")
    if content_type is not None and content_type != sniffed:
        raise EncodingError(f"content-type {content_type} but the payload is {sniffed}")
    if sniffed == "image/jpeg" and not data.rstrip(b"\x00").endswith(_JPEG_EOI):
        raise EncodingError("truncated JPEG (no end-of-image marker)")
    if sniffed == "image/png" and not data.endswith(_PNG_IEND):
        raise EncodingError("truncated PNG (no IEND chunk)")
    return sniffed


def decode_image(data: bytes, *, flags: int = cv2.IMREAD_COLOR, content_type: str | None = None,
                 strict: bool = True) -> np.ndarray:
    """Decode JPEG/PNG bytes to an 8-bit BGR image; raises :class:`EncodingError`.

    With ``strict`` (default) the payload must be a complete file of the declared
    ``content_type`` (see :func:`check_complete`).
    """
    if not data:
        raise EncodingError("empty payload")
    if strict:
        check_complete(data, content_type)
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    if image is None or image.size == 0:
        raise EncodingError(f"payload of {len(data)} bytes is not a decodable JPEG/PNG image")
    return image
