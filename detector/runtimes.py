"""Inference runtimes: one family module run by PyTorch, TorchScript, ONNX Runtime or OpenVINO.

Every runtime is a callable ``uint8 images [B,3,S,S] (numpy) -> (scores float32 [B], maps float32
[B,1,S,S])``: the family module's export contract (:mod:`detector.models.registry`), with the
pre- and post-processing inside the model.  What stays outside the graph is the same for every
backend and lives here too (:func:`to_batch`, :func:`maps_at_frame_size`): frames of any size are
resized to the square input, and maps come back at each frame's own resolution.

An *export folder* (written by :mod:`detector.export`) holds the exported model file(s) and
``linewatch-export.json``: the format, one model file per precision, the checkpoint's metadata
(family, product, threshold, version, input size; also stored inside each model file) and the
parity report.

ONNX Runtime and OpenVINO are optional extras (``pip install linewatch[onnx]`` /
``linewatch[openvino]``); :func:`available_backends` says which are installed.  On CUDA, the torch
backend runs under autocast and ONNX Runtime uses the TensorRT / CUDA execution providers when
they are installed (that path has not been run on a GPU yet).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np
import torch

from .data import resize_square, to_rgb
from .device import autocast

log = logging.getLogger(__name__)

MANIFEST = "linewatch-export.json"
EXPORT_VERSION = 1
FORMATS = ("onnx", "openvino", "torchscript")
BACKENDS = ("torch", "torchscript", "onnxruntime", "openvino")
# which backends can run which export format (OpenVINO reads ONNX files directly)
FORMAT_BACKENDS = {"onnx": ("onnxruntime", "openvino"), "openvino": ("openvino",), "torchscript": ("torchscript",)}
_BACKEND_PACKAGE = {"onnxruntime": "onnxruntime", "openvino": "openvino", "torch": "torch", "torchscript": "torch"}


class RuntimeUnavailable(RuntimeError):
    """A backend that is not installed or cannot run the given model; the message is one line."""


def available_backends() -> list[str]:
    return [b for b in BACKENDS if importlib.util.find_spec(_BACKEND_PACKAGE[b]) is not None]


def require_backend(name: str) -> None:
    if name not in BACKENDS:
        raise RuntimeUnavailable(f"unknown backend {name!r} (choose from auto, {', '.join(BACKENDS)})")
    if name not in available_backends():
        extra = "onnx" if name == "onnxruntime" else name
        raise RuntimeUnavailable(f"backend {name} is not installed (pip install 'linewatch[{extra}]')")


# ------------------------------------------------------------------------------ around the graph
def to_batch(frames: Sequence[np.ndarray], size: int) -> np.ndarray:
    """uint8 HxW / HxWx3 frames of any size -> uint8 ``[B,3,S,S]`` (C-contiguous)."""
    arr = np.stack([resize_square(to_rgb(f), size) for f in frames])
    return np.ascontiguousarray(arr.transpose(0, 3, 1, 2))


def maps_at_frame_size(maps: np.ndarray, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``[B,1,S,S]`` maps -> one float32 HxW map per frame at the frame's resolution (bilinear)."""
    out = []
    for f, a in zip(frames, maps[:, 0]):
        h, w = np.asarray(f).shape[:2]
        a = a if (h, w) == a.shape else cv2.resize(a, (w, h), interpolation=cv2.INTER_LINEAR)
        out.append(np.ascontiguousarray(a, dtype=np.float32))
    return out


def run_frames(runtime: "Runtime", frames: Sequence[np.ndarray], size: int,
               batch_size: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Score frames in chunks of ``batch_size`` -> (scores float32 [N], maps at each frame's size)."""
    frames = list(frames)
    scores: list[np.ndarray] = []
    maps: list[np.ndarray] = []
    for i in range(0, len(frames), batch_size):
        chunk = frames[i:i + batch_size]
        s, m = runtime(to_batch(chunk, size))
        scores.append(s)
        maps += maps_at_frame_size(m, chunk)
    sc = np.concatenate(scores).astype(np.float32) if scores else np.zeros(0, np.float32)
    return sc, maps


# ------------------------------------------------------------------------------------ backends
class Runtime(ABC):
    """``runtime(images uint8 [B,3,S,S]) -> (scores float32 [B], maps float32 [B,1,S,S])``."""

    name: str = ""
    precision: str = "fp32"

    @abstractmethod
    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def describe(self) -> str:
        return self.name if self.precision == "fp32" else f"{self.name} {self.precision}"


def _outputs(scores: Any, maps: Any) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(scores, dtype=np.float32).reshape(-1), np.asarray(maps, dtype=np.float32)


class TorchRuntime(Runtime):
    """The family module in eager PyTorch (autocast on CUDA, float32 on CPU)."""

    name = "torch"

    def __init__(self, module: torch.nn.Module, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()

    @torch.inference_mode()
    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        with autocast(self.device):
            scores, maps = self.module(x)
        return _outputs(scores.float().cpu().numpy(), maps.float().cpu().numpy())


class TorchScriptRuntime(TorchRuntime):
    name = "torchscript"

    def __init__(self, path: str | Path, device: torch.device | str = "cpu"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "torch.jit is deprecated": the format is what was asked for
            module = torch.jit.load(str(path), map_location=torch.device(device))
        super().__init__(module, device)


def onnx_providers(device: str = "auto") -> list[str]:
    """TensorRT, then CUDA, then CPU: those of them this onnxruntime build has (CPU only for 'cpu')."""
    import onnxruntime as ort

    have = ort.get_available_providers()
    wanted = ["CPUExecutionProvider"]
    if device in ("auto", "cuda"):
        wanted = ["TensorrtExecutionProvider", "CUDAExecutionProvider"] + wanted
    chosen = [p for p in wanted if p in have]
    if device == "cuda" and chosen == ["CPUExecutionProvider"]:
        raise RuntimeUnavailable("device 'cuda' requested but this onnxruntime has no CUDA execution provider "
                                 "(install onnxruntime-gpu)")
    return chosen


class OnnxRuntime(Runtime):
    name = "onnxruntime"

    def __init__(self, path: str | Path, device: str = "auto", threads: int | None = None, precision: str = "fp32"):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        self.precision = precision
        self.session = ort.InferenceSession(str(path), opts, providers=onnx_providers(device))
        self.providers = self.session.get_providers()
        self._input = self.session.get_inputs()[0].name

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores, maps = self.session.run(None, {self._input: np.ascontiguousarray(images, dtype=np.uint8)})
        return _outputs(scores, maps)


class OpenVinoRuntime(Runtime):
    """OpenVINO on its CPU plugin (or ``device`` = ``GPU`` / ``AUTO``), reading IR (.xml) or ONNX files.

    Inference precision is pinned to f32: on CPUs with bf16 units OpenVINO would otherwise pick bf16
    by itself and the scores would no longer match PyTorch's.
    """

    name = "openvino"

    def __init__(self, path: str | Path, device: str = "CPU", threads: int | None = None, precision: str = "fp32"):
        import openvino as ov

        core = ov.Core()
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"} if device.startswith("CPU") else {}
        if threads and device.startswith("CPU"):
            config["INFERENCE_NUM_THREADS"] = threads
        self.precision = precision
        self.compiled = core.compile_model(core.read_model(str(path)), device, config)
        self._request = self.compiled.create_infer_request()

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        res = self._request.infer({0: np.ascontiguousarray(images, dtype=np.uint8)})
        scores, maps = (res[out] for out in self.compiled.outputs)
        return _outputs(scores, maps)


# ------------------------------------------------------------------------------ export folders
@dataclass
class ExportInfo:
    """What ``linewatch-export.json`` in an export folder says."""

    dir: Path
    format: str
    models: dict[str, str]  # precision -> model file name in dir
    metadata: dict[str, Any]  # family, product, threshold, version, image_size, ... (also in the model files)
    checkpoint_meta: dict[str, Any] = field(default_factory=dict)  # the source checkpoint's full meta
    parity: dict[str, Any] = field(default_factory=dict)

    def model_path(self, precision: str = "fp32") -> Path:
        if precision not in self.models:
            raise RuntimeUnavailable(f"export {self.dir} has no {precision} model (it has {', '.join(self.models)})")
        return self.dir / self.models[precision]

    def to_json(self) -> dict[str, Any]:
        return {"export_version": EXPORT_VERSION, "format": self.format, "models": self.models,
                "metadata": self.metadata, "checkpoint_meta": self.checkpoint_meta, "parity": self.parity}


def is_export(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / MANIFEST).is_file()


def read_export(path: str | Path) -> ExportInfo:
    """Parse an export folder; ValueError with one line when it is not a usable one."""
    p = Path(path)
    if not (p / MANIFEST).is_file():
        raise ValueError(f"{p} is not an export folder (no {MANIFEST}; write one with 'linewatch-detector export')")
    try:
        d = json.loads((p / MANIFEST).read_text())
        version = d["export_version"]
        if not isinstance(version, int) or version > EXPORT_VERSION:
            raise ValueError(f"export version {version!r}; this build reads up to {EXPORT_VERSION}")
        info = ExportInfo(p, d["format"], dict(d["models"]), dict(d["metadata"]), dict(d.get("checkpoint_meta", {})),
                          dict(d.get("parity", {})))
    except (OSError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"export folder {p} has an unreadable {MANIFEST} ({str(e).splitlines()[0][:200]})") from None
    if info.format not in FORMATS:
        raise ValueError(f"export folder {p} has unknown format {info.format!r}")
    for name in info.models.values():
        if not (p / name).is_file():
            raise ValueError(f"export folder {p} is incomplete: {name} is missing")
    return info


def open_export_runtime(info: ExportInfo, backend: str, precision: str = "fp32", device: str = "auto",
                        threads: int | None = None) -> Runtime:
    """The runtime ``backend`` for an export folder's model at ``precision``."""
    if backend not in FORMAT_BACKENDS[info.format]:
        raise RuntimeUnavailable(f"backend {backend} cannot run a {info.format} export "
                                 f"(use {' or '.join(FORMAT_BACKENDS[info.format])})")
    require_backend(backend)
    path = info.model_path(precision)
    if backend == "onnxruntime":
        return OnnxRuntime(path, device, threads, precision)
    if backend == "openvino":
        return OpenVinoRuntime(path, "GPU" if device == "cuda" else "CPU", threads, precision)
    dev = "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"
    return TorchScriptRuntime(path, dev)


# ----------------------------------------------------------------------------- choosing one
@dataclass
class Timing:
    backend: str
    ms_per_frame: float


def time_runtime(runtime: Runtime, size: int, batch: int, repeats: int = 3) -> float:
    """Milliseconds per frame at ``batch``: one untimed warm-up call, then the best of ``repeats``."""
    images = np.random.default_rng(0).integers(0, 256, (batch, 3, size, size), dtype=np.uint8)
    runtime(images)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        runtime(images)
        best = min(best, time.perf_counter() - t)
    return best * 1000.0 / batch


def fastest(candidates: dict[str, Callable[[], Runtime]], size: int, batch: int,
            repeats: int = 3) -> tuple[Runtime, list[Timing]]:
    """Build each candidate, time it on random frames, keep the fastest (the others are dropped).

    A candidate that fails to build or run is skipped with a warning; when all fail, the last
    error is raised.
    """
    best: tuple[float, Runtime] | None = None
    timings: list[Timing] = []
    error: Exception | None = None
    for name, make in candidates.items():
        try:
            rt = make()
            ms = time_runtime(rt, size, batch, repeats)
        except Exception as e:  # noqa: BLE001 - a broken optional backend must not stop the others
            log.warning("backend %s skipped: %s", name, str(e).splitlines()[0][:200] if str(e) else type(e).__name__)
            error = e
            continue
        timings.append(Timing(name, ms))
        if best is None or ms < best[0]:
            best = (ms, rt)
    if best is None:
        raise RuntimeUnavailable(f"no backend could run the model ({error})")
    chosen = best[1]
    log.info("backend auto chose %s: %s (ms per frame at batch %d, best of %d after a warm-up)",
             chosen.describe(), ", ".join(f"{t.backend} {t.ms_per_frame:.1f}" for t in timings), batch, repeats)
    return chosen, timings


# --------------------------------------------------------------------------------- loading
@dataclass
class Loaded:
    """A model ready to run: the runtime plus what the Detector needs to know about it."""

    runtime: Runtime
    meta: dict[str, Any]  # the checkpoint's meta (threshold, product, family, metrics, ...)
    version: str  # the checkpoint's version (first 12 hex digits of its sha256), exported or not
    image_size: int
    module: torch.nn.Module | None = None  # the PyTorch module when loaded from a checkpoint
    timings: list[Timing] = field(default_factory=list)  # backend "auto": what was measured


def export_cache_dir() -> Path:
    """Where checkpoints loaded with a non-torch backend are exported to (once per checkpoint):
    ``LINEWATCH_EXPORT_CACHE``, else ``~/.cache/linewatch/exports``."""
    env = os.environ.get("LINEWATCH_EXPORT_CACHE")
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "linewatch" / "exports"
    return Path(env) if env else base


# What writes a cached export (torch's exporter with onnx/onnxscript) and what checks its parity
# (onnxruntime in either build, openvino): a new version of any of them gets a new cache entry.
EXPORT_TOOLS = ("torch", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu", "openvino")


def export_tool_versions() -> dict[str, str]:
    """Installed version of each distribution in :data:`EXPORT_TOOLS` (``absent`` when not installed).

    Read from the package metadata, so nothing heavy is imported on a cache hit."""
    versions = {}
    for dist in EXPORT_TOOLS:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "absent"
    return versions


def graph_code_digest() -> str:
    """sha256 of the code that defines an exported graph: the exporter and every family's modules.

    A changed ``forward`` with the same checkpoint must not reuse the old graph; a code upgrade
    costs one re-export per checkpoint."""
    here = Path(__file__).parent
    h = hashlib.sha256()
    for f in [here / "export.py", *sorted((here / "models").rglob("*.py"))]:
        h.update(f.relative_to(here).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def export_cache_key(sha: str, versions: dict[str, str] | None = None, code: str | None = None) -> str:
    """Cache folder name of a checkpoint's ONNX export: the checkpoint's sha256, the export format
    version, the versions of the tools that write and check it, and the graph code."""
    key = {"export_version": EXPORT_VERSION, "tools": export_tool_versions() if versions is None else versions,
           "code": graph_code_digest() if code is None else code}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return f"{sha[:16]}-onnx-{digest[:12]}"


# Pruning the cache: besides the entries this process has loaded, the most recently used ones are
# kept (rollbacks, the other models of a routing, replicas sharing the cache), and anything used
# within the grace period (another process may be loading it now).
EXPORT_CACHE_KEEP = 4
EXPORT_CACHE_GRACE_S = 24 * 3600.0
_loaded_entries: set[str] = set()  # cache entries this process has opened: never pruned by it


def _last_used(entry: Path) -> float:
    """When an entry was last loaded (its manifest is touched at each load) or, for a failed or
    partial export, last written."""
    try:
        return (entry / MANIFEST).stat().st_mtime if is_export(entry) else entry.stat().st_mtime
    except OSError:
        return 0.0


def prune_export_cache(cache: Path, in_use: set[str] = frozenset(), keep_last: int | None = None,
                       grace_s: float | None = None, now: float | None = None) -> list[Path]:
    """Delete old entries of the export cache; returns the folders deleted.

    Kept: the entries named in ``in_use`` and those this process loaded, the ``keep_last``
    (``LINEWATCH_EXPORT_CACHE_KEEP``, default :data:`EXPORT_CACHE_KEEP`) most recently used other
    complete exports, and every folder (complete, failed or still being written) used within
    ``grace_s`` (default :data:`EXPORT_CACHE_GRACE_S`).  Everything else goes: exports of replaced checkpoints and of older tool or code
    versions, failed attempts and exports a crashed process left half-written."""
    if keep_last is None:
        keep_last = int(os.environ.get("LINEWATCH_EXPORT_CACHE_KEEP", EXPORT_CACHE_KEEP))
    grace_s = EXPORT_CACHE_GRACE_S if grace_s is None else grace_s
    now = time.time() if now is None else now
    try:
        entries = [p for p in cache.iterdir() if p.is_dir()]
    except OSError:
        return []
    keep = set(in_use) | _loaded_entries
    complete = sorted((p for p in entries if is_export(p) and p.name not in keep), key=_last_used, reverse=True)
    keep |= {p.name for p in complete[:max(0, keep_last)]}
    deleted = []
    for p in entries:
        if p.name in keep or now - _last_used(p) < grace_s:
            continue
        shutil.rmtree(p, ignore_errors=True)
        if not p.exists():
            deleted.append(p)
    if deleted:
        log.info("export cache %s: deleted %d old entries (%s)", cache, len(deleted),
                 ", ".join(p.name for p in deleted))
    return deleted


def _use_entry(folder: Path) -> ExportInfo:
    """Mark a cache entry as used now (its manifest's mtime) and read it."""
    try:
        os.utime(folder / MANIFEST)
    except OSError:  # a read-only cache (made elsewhere) still serves; nobody prunes it from here
        pass
    _loaded_entries.add(folder.name)
    return read_export(folder)


def _cached_onnx_export(module: torch.nn.Module, meta: dict[str, Any], sha: str) -> ExportInfo:
    """The checkpoint's ONNX export in the cache, written (parity checked) the first time; then the
    cache's old entries are pruned (:func:`prune_export_cache`)."""
    folder = export_cache_dir() / export_cache_key(sha)
    info = _load_or_write_export(folder, module, meta, sha)
    try:
        prune_export_cache(folder.parent, {folder.name})
    except Exception:  # noqa: BLE001 - a cache that cannot be pruned still serves
        log.warning("could not prune the export cache %s", folder.parent, exc_info=True)
    return info


def _load_or_write_export(folder: Path, module: torch.nn.Module, meta: dict[str, Any], sha: str) -> ExportInfo:
    """Written into a private folder and renamed into place, so two processes exporting the same
    checkpoint at once (detector replicas sharing a cache) never see each other's partial files."""
    from .export import ExportError, checkpoint_metadata, export_module

    if is_export(folder):
        try:
            return _use_entry(folder)
        except ValueError as e:
            log.warning("re-exporting %s: %s", folder, e)
            shutil.rmtree(folder, ignore_errors=True)
    log.info("exporting the checkpoint to ONNX once, into %s (parity checked)", folder)
    # a name no other writer can have (replicas in containers share process ids)
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{folder.name}.tmp-", dir=folder.parent))
    try:
        try:
            export_module(module, checkpoint_metadata(module, meta, sha), "onnx", work, checkpoint_meta=meta)
        except ExportError as e:  # keep the last failed attempt's parity report where the message says
            failed = folder.with_name(f"{folder.name}.failed")
            shutil.rmtree(failed, ignore_errors=True)
            if work.is_dir():
                work.rename(failed)
            raise ExportError(str(e).replace(str(work), str(failed))) from e
        try:
            work.rename(folder)
        except OSError:  # another process got there first: its export passed the same parity check
            if not is_export(folder):
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _use_entry(folder)


def open_runtime(path: str | Path, backend: str = "torch", device: str = "auto", batch_size: int = 8,
                 precision: str = "fp32", threads: int | None = None) -> Loaded:
    """Load a checkpoint or an export folder for ``backend`` (``auto``: time the candidates, keep the fastest).

    A checkpoint with backend onnxruntime/openvino (or auto, when they are installed) is exported to
    ONNX once (:func:`export_cache_dir`), parity checked like any export.  Raises ValueError,
    RuntimeUnavailable or ExportError with one line; checkpoint problems raise CheckpointError.
    """
    if backend != "auto":
        require_backend(backend)
    if is_export(path):
        info = read_export(path)
        if backend == "torch":
            raise RuntimeUnavailable(f"{path} is a {info.format} export: backend torch needs the checkpoint")
        names = [b for b in FORMAT_BACKENDS[info.format] if b in available_backends()] if backend == "auto" else [backend]
        if not names:
            raise RuntimeUnavailable(f"no installed backend runs a {info.format} export "
                                     f"(pip install 'linewatch[{'onnx' if info.format == 'onnx' else info.format}]')")
        meta = {**info.checkpoint_meta, **{k: info.metadata[k] for k in ("family", "product", "threshold")
                                            if k in info.metadata}}
        makers = {b: (lambda b=b: open_export_runtime(info, b, precision, device, threads)) for b in names}
        version, size, module = str(info.metadata["version"]), int(info.metadata["image_size"]), None
    else:
        from .checkpoint import load_model
        from .device import resolve_device

        if precision != "fp32":
            raise ValueError(f"precision {precision} needs an export folder (linewatch-detector export --int8)")
        if backend == "torchscript":
            raise RuntimeUnavailable(f"backend torchscript runs an export folder, not a checkpoint: "
                                     f"linewatch-detector export --checkpoint {path} --format torchscript first")
        dev = resolve_device(device)
        module, meta, sha = load_model(path, dev)
        version, size = sha[:12], int(module.image_size)
        makers: dict[str, Callable[[], Runtime]] = {"torch": lambda: TorchRuntime(module, dev)}
        onnx_backends = [b for b in ("onnxruntime", "openvino") if b in available_backends()]
        if backend in ("onnxruntime", "openvino") or (backend == "auto" and onnx_backends):
            try:
                info = _cached_onnx_export(module, meta, sha)  # exports on the CPU
            except Exception as e:  # noqa: BLE001 - auto must still serve: on torch, saying why
                if backend != "auto":
                    raise
                log.warning("backend auto: running on torch, the checkpoint's ONNX export is unusable: %s",
                            str(e).splitlines()[0] if str(e) else type(e).__name__)
                onnx_backends = []
            finally:
                module.to(dev)
            for b in onnx_backends:
                makers[b] = lambda b=b: open_export_runtime(info, b, "fp32", device, threads)
        if backend != "auto":
            makers = {backend: makers[backend]}
    if len(makers) == 1:
        return Loaded(next(iter(makers.values()))(), meta, version, size, module)
    runtime, timings = fastest(makers, size, batch_size)
    return Loaded(runtime, meta, version, size, module if runtime.name == "torch" else None, timings)
