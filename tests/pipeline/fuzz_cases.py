"""Hypothesis strategies for the fuzz test: frame and result messages built from their schemas, then broken.

A case is a :class:`Case`: the Kafka record to publish (topic stream, headers, value) and what must
become of it: ``stored`` (a row), ``dead`` with one of ``codes`` (a dead letter), or ``either`` (a
corrupted payload may still decode).  Ids (frame ids, the ``x-fuzz`` tracking header) are given at
publish time by :func:`assign_ids`, so a case replayed by hypothesis is a new message.
"""

from __future__ import annotations

import base64
import io
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import cache

import cv2
import numpy as np
from hypothesis import strategies as st

from ingest.messages import ID_PATTERN

FRAME_ID_PLACEHOLDER = "{frame_id}"
REQUIRED_FRAME_HEADERS = ("lw-schema", "lw-frame-id", "lw-line", "lw-station", "lw-camera", "lw-seq",
                          "lw-captured-at", "content-type")
# the fuzzed detector's limits (tests/pipeline/test_fuzz.py sets them)
MAX_FRAME_BYTES = 300_000
MAX_FRAME_PIXELS = 1_000_000


@dataclass
class Case:
    stream: str  # "frames" or "results"
    kind: str  # what was generated / broken, for the failure report
    headers: list[tuple[str, bytes]]
    value: bytes
    expect: str  # "stored" | "dead" | "either"
    codes: frozenset[str] = frozenset()
    case_id: str = ""
    frame_id: str = ""
    extra: dict = field(default_factory=dict)


def assign_ids(case: Case, case_id: str) -> Case:
    """Give the case its tracking id and a unique frame id (replacing the placeholder)."""
    frame_id = f"fz-{case_id}"
    ph = FRAME_ID_PLACEHOLDER.encode()
    headers = [(k, v.replace(ph, frame_id.encode()) if isinstance(v, bytes) else v) for k, v in case.headers]
    headers.append(("x-fuzz", case_id.encode()))
    return Case(case.stream, case.kind, headers, case.value.replace(ph, frame_id.encode()), case.expect,
                case.codes, case_id, frame_id, case.extra)


# ----------------------------------------------------------------------------- images

def _rng_image(h: int, w: int, channels: int, seed: int, dtype=np.uint8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top = 256 if dtype == np.uint8 else 65536
    shape = (h, w) if channels == 1 else (h, w, channels)
    base = rng.integers(0, top, shape, dtype=np.int64)
    # smooth-ish content (a gradient plus noise) so PNGs stay small
    grad = (np.linspace(0, top - 1, w)[None, :] * np.ones((h, 1))).astype(np.int64)
    if channels > 1:
        grad = grad[..., None]
    return ((base // 8 + grad) % top).astype(dtype)


def encode_image(kind: str, h: int, w: int, seed: int) -> tuple[bytes, str]:
    if kind == "jpeg-cmyk":
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(_rng_image(h, w, 3, seed)).convert("CMYK").save(buf, format="JPEG", quality=85)
        return buf.getvalue(), "image/jpeg"
    img = {
        "png": lambda: _rng_image(h, w, 3, seed),
        "png-16bit": lambda: _rng_image(h, w, 3, seed, np.uint16),
        "png-grey-16bit": lambda: _rng_image(h, w, 1, seed, np.uint16),
        "png-alpha": lambda: _rng_image(h, w, 4, seed),
        "png-grey": lambda: _rng_image(h, w, 1, seed),
        "jpeg": lambda: _rng_image(h, w, 3, seed),
        "jpeg-grey": lambda: _rng_image(h, w, 1, seed),
        "jpeg-progressive": lambda: _rng_image(h, w, 3, seed),
    }[kind]()
    if kind.startswith("png"):
        ok, buf = cv2.imencode(".png", img)
        return buf.tobytes(), "image/png"
    params = [cv2.IMWRITE_JPEG_QUALITY, 85]
    if kind == "jpeg-progressive":
        params += [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]
    ok, buf = cv2.imencode(".jpg", img, params)
    assert ok
    return buf.tobytes(), "image/jpeg"


IMAGE_KINDS = ("png", "png-16bit", "png-grey-16bit", "png-alpha", "png-grey", "jpeg", "jpeg-grey",
               "jpeg-progressive", "jpeg-cmyk")


@st.composite
def images(draw) -> tuple[bytes, str, str]:
    kind = draw(st.sampled_from(IMAGE_KINDS))
    h, w = draw(st.one_of(
        st.tuples(st.integers(1, 48), st.integers(1, 48)),
        st.sampled_from([(1, 1), (1, 600), (600, 1), (2, 400), (400, 3)]),  # one pixel, extreme aspect
    ))
    data, ctype = encode_image(kind, h, w, draw(st.integers(0, 2**16)))
    return data, ctype, f"{kind} {w}x{h}"


@cache
def png_bomb() -> bytes:
    """A ~30 KB PNG that decodes to 4000x4000 = 16 M pixels (the fuzzed detector allows 1 M)."""
    ok, buf = cv2.imencode(".png", np.zeros((4000, 4000), np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    return buf.tobytes()


@cache
def jpeg_bomb() -> bytes:
    """A small JPEG whose frame header declares 65000x65000 pixels (dimensions patched in the SOF)."""
    data = bytearray(encode_image("jpeg", 8, 8, 0)[0])
    i = 2
    while data[i + 1] not in (0xC0, 0xC2):
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    data[i + 5:i + 9] = (65000).to_bytes(2, "big") * 2
    return bytes(data)


@cache
def too_many_bytes() -> bytes:
    """A valid PNG above the fuzzed detector's byte limit."""
    rng = np.random.default_rng(1)
    ok, buf = cv2.imencode(".png", rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))
    assert len(buf) > MAX_FRAME_BYTES
    return buf.tobytes()


# ----------------------------------------------------------------------------- frames

_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
# valid ids (ingest.messages.ID_PATTERN); built from characters, which is much cheaper than st.from_regex
ids = st.builds(lambda first, rest: first + rest, st.sampled_from(_ALNUM),
                st.text(alphabet=_ALNUM + "._-", max_size=24))
BAD_IDS = st.one_of(
    st.sampled_from(["", ".", "..", "../etc", "a/b", "-lead", "_lead", "sp ace", "tab\t", "nul\x00", "x" * 201,
                     "ümlaut", "semi;colon", "<script>", "=cmd()", "new\nline"]),
    st.text(min_size=1, max_size=30).filter(lambda t: not re.fullmatch(ID_PATTERN, t)),
)


@st.composite
def frame_meta_headers(draw, now: datetime, content_type: str) -> list[tuple[str, bytes]]:
    captured = now + timedelta(seconds=draw(st.integers(-3600, 60)), microseconds=draw(st.integers(0, 999_999)))
    tz = timezone(timedelta(minutes=draw(st.sampled_from([0, 60, -300, 330]))))
    h = {
        "lw-schema": "1", "lw-frame-id": FRAME_ID_PLACEHOLDER, "lw-line": draw(ids), "lw-station": draw(ids),
        "lw-camera": draw(ids), "lw-seq": str(draw(st.integers(0, 2**63 - 1))),
        "lw-captured-at": captured.astimezone(tz).isoformat(), "content-type": content_type,
    }
    if draw(st.booleans()):
        h["lw-part"] = draw(ids)
    if draw(st.booleans()):
        h["lw-product"] = draw(ids)
    return [(k, v.encode()) for k, v in h.items()]


def _bad_header_values(header: str, now: datetime) -> st.SearchStrategy[bytes]:
    if header == "lw-seq":
        values = st.sampled_from(["-1", str(2**63), str(10**30), "1.5", "abc", "", "0x10"])
    elif header == "lw-captured-at":
        values = st.sampled_from([
            "2026-01-01T00:00:00", "0001-01-01T00:30:00+01:00", "9999-12-31T23:30:00-01:00", "yesterday", "",
            (now - timedelta(days=30)).isoformat(), (now + timedelta(days=1)).isoformat(), "1999-12-31T23:00:00Z",
        ])
    elif header == "lw-schema":
        values = st.sampled_from(["2", "", "01", "1.0", "one"])
    elif header == "content-type":
        values = st.sampled_from(["image/gif", "", "IMAGE/PNG", "image/png; q=1", "text/plain"])
    else:
        values = BAD_IDS
    return st.one_of(values.map(lambda s: s.encode("utf-8", "surrogatepass")),
                     st.sampled_from([b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80"]))  # not UTF-8


@st.composite
def frame_cases(draw, now: datetime) -> Case:
    data, ctype, desc = draw(images())
    headers = draw(frame_meta_headers(now, ctype))
    # hypothesis favours the first choices: cheap broken ones first, then valid frames (an inference each)
    how = draw(st.sampled_from([
        "drop-header", "dup-header", "bad-header", "renamed-header", "good", "wrong-content-type", "garbage",
        "empty", "png-bomb", "jpeg-bomb", "too-many-bytes", "truncated", "corrupted",
    ]))
    schema = frozenset({"schema"})
    if how == "good":
        return Case("frames", f"good {desc}", headers, data, "stored")
    if how in ("drop-header", "dup-header", "bad-header", "renamed-header"):
        name = draw(st.sampled_from(REQUIRED_FRAME_HEADERS + ("lw-part", "lw-product")))
        present = [k for k, _ in headers]
        if name not in present:
            headers.append((name, draw(ids).encode()))
        if how == "drop-header":
            if name not in REQUIRED_FRAME_HEADERS:
                name = "lw-camera"
            headers = [(k, v) for k, v in headers if k != name]
        elif how == "dup-header":
            headers.append((name, dict(headers)[name] if draw(st.booleans()) else draw(ids).encode()))
        elif how == "renamed-header":
            if name not in REQUIRED_FRAME_HEADERS:
                name = "lw-camera"
            headers = [(k.upper() if k == name else k, v) for k, v in headers]
        else:
            bad = draw(_bad_header_values(name, now))
            headers = [(k, bad if k == name else v) for k, v in headers]
        return Case("frames", f"{how} {name} {desc}", headers, data, "dead", schema)
    if how == "wrong-content-type":
        other = "image/png" if ctype == "image/jpeg" else "image/jpeg"
        headers = [(k, other.encode() if k == "content-type" else v) for k, v in headers]
        return Case("frames", f"{how} {desc}", headers, data, "dead", frozenset({"undecodable"}))
    if how == "truncated":
        cut = draw(st.integers(1, max(1, len(data) - 1)))
        part = data[:cut]
        complete = part.rstrip(b"\x00").endswith(b"\xff\xd9") or part.endswith(b"IEND\xaeB`\x82")
        return Case("frames", f"{how} at {cut}/{len(data)} {desc}", headers, part,
                    "either" if complete else "dead", frozenset({"undecodable", "oversized"}))
    if how == "corrupted":
        buf = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            buf[draw(st.integers(0, len(buf) - 1))] = draw(st.integers(0, 255))
        return Case("frames", f"{how} {desc}", headers, bytes(buf), "either",
                    frozenset({"undecodable", "oversized", "inference"}))
    if how == "garbage":
        junk = draw(st.binary(min_size=1, max_size=512).filter(lambda b: not b.startswith((b"\xff\xd8", b"\x89PNG"))))
        return Case("frames", how, headers, junk, "dead", frozenset({"undecodable"}))
    if how == "empty":
        return Case("frames", how, headers, b"", "dead", frozenset({"empty"}))
    payload, code = {"png-bomb": (png_bomb(), "oversized"), "jpeg-bomb": (jpeg_bomb(), "oversized"),
                     "too-many-bytes": (too_many_bytes(), "oversized")}[how]
    ct = b"image/jpeg" if payload.startswith(b"\xff\xd8") else b"image/png"
    headers = [(k, ct if k == "content-type" else v) for k, v in headers]
    return Case("frames", how, headers, payload, "dead", frozenset({code}))


# ----------------------------------------------------------------------------- results

@cache
def _heatmap_png() -> bytes:
    return encode_image("png-grey", 12, 16, 3)[0]


@st.composite
def result_documents(draw, now: datetime) -> dict:
    """A valid inspection result as the JSON document the detector sends."""
    captured = now - timedelta(seconds=draw(st.integers(0, 10 * 24 * 3600)))
    doc = {
        "schema_version": 1, "frame_id": FRAME_ID_PLACEHOLDER, "line": draw(ids), "station": draw(ids),
        "camera_id": draw(ids), "seq": draw(st.integers(0, 2**63 - 1)),
        "part_id": draw(st.none() | ids), "product": draw(st.none() | ids),
        "captured_at": captured.isoformat(), "inferred_at": (captured + timedelta(milliseconds=40)).isoformat(),
        "score": draw(st.floats(0, 1e6, allow_nan=False)), "threshold": draw(st.floats(0, 1e6, allow_nan=False)),
        "is_anomalous": draw(st.booleans()), "model_version": draw(ids),
        "frame_width": draw(st.integers(1, 10_000)), "frame_height": draw(st.integers(1, 10_000)),
        "heatmap_png": base64.b64encode(_heatmap_png()).decode(), "heatmap_max": draw(st.floats(0, 1e3)),
        "frame_image": None, "frame_content_type": None, "frame_reason": None,
    }
    if draw(st.booleans()):
        data, ctype, _ = draw(images())
        doc.update(frame_image=base64.b64encode(data).decode(), frame_content_type=ctype,
                   frame_reason=draw(st.sampled_from(["flagged", "sampled"])))
    return doc


REQUIRED_RESULT_FIELDS = ("schema_version", "frame_id", "line", "station", "camera_id", "seq", "captured_at",
                          "inferred_at", "score", "threshold", "is_anomalous", "model_version", "frame_width",
                          "frame_height", "heatmap_png", "heatmap_max")


@st.composite
def result_cases(draw, now: datetime) -> Case:
    doc = draw(result_documents(now))
    how = draw(st.sampled_from(["good", "drop-field", "bad-id", "bad-number", "bad-time",
                                "bad-version", "bad-heatmap", "bad-frame-type", "bad-base64", "truncated",
                                "not-json", "not-utf8", "empty", "wrong-type"]))
    headers: list[tuple[str, bytes]] = []
    schema = frozenset({"schema"})

    def case(kind: str, value: bytes, expect: str = "dead", codes: frozenset[str] = schema) -> Case:
        return Case("results", kind, headers, value, expect, codes)

    if how == "good":
        return case("good result", json.dumps(doc).encode(), "stored")
    if how == "drop-field":
        name = draw(st.sampled_from(REQUIRED_RESULT_FIELDS[1:]))  # without schema_version: the default is 1
        del doc[name]
        return case(f"{how} {name}", json.dumps(doc).encode())
    if how == "bad-id":
        name = draw(st.sampled_from(["frame_id", "line", "station", "camera_id", "part_id", "product"]))
        doc[name] = draw(BAD_IDS)
        # a lone surrogate in the JSON text is invalid JSON for the parser: undecodable
        return case(f"{how} {name}={doc[name]!r}", json.dumps(doc).encode(), codes=frozenset({"schema", "undecodable"}))
    if how == "bad-number":
        name, value = draw(st.sampled_from([
            ("seq", 2**63), ("seq", -1), ("score", "NaN"), ("threshold", "Infinity"), ("heatmap_max", -1.0),
            ("heatmap_max", "-Infinity"), ("frame_width", 0), ("frame_height", 10**9), ("score", "1e400"),
        ]))
        doc[name] = value
        return case(f"{how} {name}={value!r}", json.dumps(doc).encode())
    if how == "bad-time":
        name = draw(st.sampled_from(["captured_at", "inferred_at"]))
        doc[name] = draw(st.sampled_from(["0001-01-01T00:30:00+01:00", "9999-12-31T23:30:00-01:00",
                                          "2026-01-01T00:00:00", "soon", "1970-01-01T00:00:00Z"]))
        return case(f"{how} {name}={doc[name]}", json.dumps(doc).encode())
    if how == "bad-version":
        doc["schema_version"] = draw(st.sampled_from([0, 2, "1", None]))
        return case(f"{how} {doc['schema_version']!r}", json.dumps(doc).encode())
    if how == "bad-heatmap":
        doc["heatmap_png"] = base64.b64encode(draw(st.sampled_from([b"GIF89a....", b"", b"\xff\xd8\xff\xe0"]))).decode()
        return case(how, json.dumps(doc).encode(), codes=frozenset({"invalid"}))
    if how == "bad-frame-type":
        doc.update(frame_image=base64.b64encode(b"GIF89a" + bytes(20)).decode(), frame_content_type="image/png",
                   frame_reason="flagged")
        return case(how, json.dumps(doc).encode(), codes=frozenset({"invalid"}))
    if how == "bad-base64":
        doc["heatmap_png"] = "***not base64***"
        return case(how, json.dumps(doc).encode())
    if how == "truncated":
        raw = json.dumps(doc).encode()
        return case(how, raw[:draw(st.integers(1, len(raw) - 1))], codes=frozenset({"undecodable"}))
    if how == "not-json":
        junk = draw(st.binary(min_size=1, max_size=200).filter(lambda b: not b.strip().startswith(b"{")))
        return case(how, junk, codes=frozenset({"undecodable"}))
    if how == "not-utf8":
        raw = json.dumps(doc).encode().replace(b'"line": "', b'"line": "\xff\xfe', 1)
        return case(how, raw, codes=frozenset({"undecodable", "schema"}))
    if how == "empty":
        return case(how, b"", codes=frozenset({"empty"}))
    # a JSON value that is not an object
    return case(how, json.dumps(draw(st.sampled_from([[], 1, "x", None, [doc]]))).encode(),
                codes=frozenset({"undecodable", "schema"}))
