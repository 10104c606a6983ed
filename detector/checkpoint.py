"""The detector checkpoint: one file with everything needed to run a trained model of any family.

Format (version 2): a ``torch.save`` zip holding only tensors, strings and numbers, so it loads
with ``torch.load(weights_only=True)`` (no arbitrary unpickling)::

    {"format": "linewatch-detector", "format_version": 2,
     "family": "<registered model family, e.g. ear-fader, crad>",
     "config": "<json: the family's architecture config>",
     "meta":   "<json: threshold (and per-product thresholds of a unified model), target FAR,
                product(s), training-data fingerprint, metrics, training config and timings,
                the family's own facts (e.g. the masker identity), library versions, created_at>",
     "state":  {name: tensor}  # the whole module, frozen pretrained parts included
     "state_sha256": "<content hash of state>"}

Version 1 (before model families) had no ``family``: it is read as ``ear-fader``, whose config
and state names are unchanged.

Every problem on load -- missing, truncated, foreign, newer format, altered or mismatched
content -- raises :class:`CheckpointError` with a one-line message.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import zipfile
from pathlib import Path
from typing import Any

import torch

import torch.nn as nn

from .hashing import state_sha256
from .models.registry import family_of, get_family

FORMAT = "linewatch-detector"
FORMAT_VERSION = 2
V1_FAMILY = "ear-fader"


class CheckpointError(Exception):
    """A checkpoint that cannot be used; ``str(e)`` is a single line."""


def library_versions() -> dict[str, str]:
    import cv2
    import numpy
    import sklearn
    import timm

    return {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
            "numpy": numpy.__version__, "scikit-learn": sklearn.__version__, "opencv": cv2.__version__}


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> str:
    """Write atomically; returns the file's sha256.  The family is found from ``model.cfg``."""
    path = Path(path)
    family = family_of(model.cfg)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    meta = dict(meta)
    meta["family"] = family.name
    meta.setdefault("created_at", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    meta.setdefault("library_versions", library_versions())
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "family": family.name,
        "config": json.dumps(model.cfg.to_dict(), sort_keys=True),
        "meta": json.dumps(meta, sort_keys=True, default=_json_default),
        "state": state,
        "state_sha256": state_sha256(state),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return (msg[0] if msg else type(e).__name__)[:200]


def read_checkpoint(path: str | Path) -> tuple[Any, dict[str, Any], dict[str, torch.Tensor], str]:
    """Validate and parse a checkpoint file -> (family config, meta, state, file sha256).

    ``meta["family"]`` names the family (``ear-fader`` for a version-1 file).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or _one_line(e)}") from None
    if not data.startswith(b"PK\x03\x04"):
        if len(data) == 0:
            raise CheckpointError(f"checkpoint {path} is empty")
        raise CheckpointError(f"{path} is not a linewatch detector checkpoint (unrecognised file format)")
    sha = hashlib.sha256(data).hexdigest()
    import io

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            bad = zf.testzip()
        if bad is not None:
            raise CheckpointError(f"checkpoint {path} is corrupt (bad CRC in {bad})")
    except zipfile.BadZipFile:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt (incomplete archive)") from None
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure here is a bad file
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise CheckpointError(f"{path} is not a linewatch detector checkpoint (holds objects that are not plain tensors/values)") from None
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({_one_line(e)})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a linewatch detector checkpoint (foreign PyTorch file)")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise CheckpointError(f"checkpoint {path} has format version {version!r}; this build reads up to {FORMAT_VERSION}")
    name = payload.get("family", V1_FAMILY) if version >= 2 else V1_FAMILY
    try:
        family = get_family(name) if isinstance(name, str) else None
    except ValueError:
        family = None
    if family is None:
        raise CheckpointError(f"checkpoint {path} is of model family {name!r}, which this build does not have")
    try:
        cfg = family.config_cls.from_dict(json.loads(payload["config"]))
        meta = json.loads(payload["meta"])
        meta["family"] = family.name
        state = payload["state"]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError("state is not a dict of tensors")
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} has invalid contents ({_one_line(e)})") from None
    if payload.get("state_sha256") != state_sha256(state):
        raise CheckpointError(f"checkpoint {path} content hash mismatch: the weights were altered or corrupted")
    return cfg, meta, state, sha


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any], str]:
    """-> (the family's module in eval mode on ``device``, meta, file sha256); CheckpointError if unusable."""
    cfg, meta, state, sha = read_checkpoint(path)
    family = get_family(meta["family"])
    try:
        model = family.build(family.for_loading(cfg))
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"checkpoint {path}: cannot build its architecture ({_one_line(e)})") from None
    expected = set(model.state_dict())
    if set(state) != expected:
        missing, extra = len(expected - set(state)), len(set(state) - expected)
        raise CheckpointError(f"checkpoint {path} does not match its architecture config ({missing} missing, {extra} unexpected tensors)")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not match its architecture config ({_one_line(e)})") from None
    try:
        family.verify(model, meta)
    except ValueError as e:
        raise CheckpointError(f"checkpoint {path}: {_one_line(e)}") from None
    model.eval()
    return model.to(device), meta, sha
