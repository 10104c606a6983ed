"""Which checkpoint scores which frame, and the holder that swaps models between batches.

Routing file (JSON, or YAML when the name ends in ``.yaml``/``.yml``); every key is optional::

    default: models/flange-v3.pt          # frames that match nothing below
    products:                             # frame header lw-product -> checkpoint
      flange: models/flange-v3.pt
      bottle: models/bottle-v1.pt
    cameras:                              # camera id -> checkpoint (wins over products)
      cam-07: models/cam07-special.pt
    thresholds:                           # optional overrides of the checkpoints' calibrated thresholds
      cameras: {cam-07: 0.42}
      products: {bottle: 0.31}

Relative paths are resolved against the routing file's folder.  Resolution for a frame: its
camera, then its product, then ``default`` (``--model`` / ``LINEWATCH_DETECTOR_MODEL`` override
the file's ``default``).  A frame no route matches goes to the dead-letter topic (``no-model``).
The threshold of a result is the camera's override, else the product's, else the checkpoint's.

Hot reload: a :class:`ModelSet` is an immutable snapshot (routing + loaded detectors).
The service takes ``holder.current`` once per batch, so a whole batch is scored by one snapshot
and every result carries the version (``Detector.version``) that scored it.  A new snapshot is
built off the hot path (:meth:`ModelHolder.build`, reusing detectors whose file did not change)
and handed over with :meth:`ModelHolder.stage`; the service calls :meth:`ModelHolder.activate`
between batches.  Nothing is dropped or scored twice by a swap.  ``SIGHUP`` to ``serve`` re-reads
the routing file and the checkpoints this way; a registry watcher can call the same two methods.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

log = logging.getLogger("linewatch.detector.service")


class RoutingError(ValueError):
    """The routing configuration is missing, unreadable or invalid (one-line message)."""


# a threshold is a finite number >= 0: NaN would flag nothing, a negative one everything
Threshold = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class ThresholdOverrides(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    cameras: dict[str, Threshold] = Field(default_factory=dict)
    products: dict[str, Threshold] = Field(default_factory=dict)


class RoutingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    default: str | None = None
    products: dict[str, str] = Field(default_factory=dict)
    cameras: dict[str, str] = Field(default_factory=dict)
    thresholds: ThresholdOverrides = Field(default_factory=ThresholdOverrides)

    def resolve(self, camera_id: str, product: str | None) -> str | None:
        """The checkpoint path for a frame, or ``None`` when no route matches."""
        if camera_id in self.cameras:
            return self.cameras[camera_id]
        if product is not None and product in self.products:
            return self.products[product]
        return self.default

    def threshold_override(self, camera_id: str, product: str | None) -> float | None:
        if camera_id in self.thresholds.cameras:
            return self.thresholds.cameras[camera_id]
        if product is not None and product in self.thresholds.products:
            return self.thresholds.products[product]
        return None

    def paths(self) -> list[str]:
        """Every checkpoint the routing refers to (each once, in a stable order)."""
        out: list[str] = []
        for p in [self.default, *self.cameras.values(), *self.products.values()]:
            if p is not None and p not in out:
                out.append(p)
        return out

    def absolute(self, base: Path) -> "RoutingConfig":
        def fix(p: str) -> str:
            q = Path(p).expanduser()
            return str(q if q.is_absolute() else (base / q).resolve())

        return self.model_copy(update={
            "default": fix(self.default) if self.default else None,
            "products": {k: fix(v) for k, v in self.products.items()},
            "cameras": {k: fix(v) for k, v in self.cameras.items()},
        })


def load_routing(path: str | Path | None = None, default_model: str | Path | None = None) -> RoutingConfig:
    """Read the routing file (if any) and apply ``default_model``; raises :class:`RoutingError`."""
    cfg = RoutingConfig()
    if path is not None:
        p = Path(path).expanduser()
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise RoutingError(f"cannot read routing file {p}: {exc.strerror or exc}") from None
        try:
            if p.suffix.lower() in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception as exc:  # noqa: BLE001 - json/yaml parse errors
            raise RoutingError(f"routing file {p} is not valid {p.suffix.lstrip('.') or 'JSON'}: "
                               f"{str(exc).splitlines()[0]}") from None
        if data is None:
            data = {}
        try:
            cfg = RoutingConfig.model_validate(data).absolute(p.resolve().parent)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(x) for x in err.get("loc", ())) or "file"
            raise RoutingError(f"routing file {p}: {loc}: {err.get('msg')}") from None
    if default_model is not None:
        cfg = cfg.model_copy(update={"default": str(Path(default_model).expanduser().resolve())})
    if not cfg.paths():
        raise RoutingError("no model configured: give --model (LINEWATCH_DETECTOR_MODEL) or a routing file "
                           "(--routes, LINEWATCH_DETECTOR_ROUTES) with at least one checkpoint")
    return cfg


def _file_id(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_mtime_ns, st.st_size


@dataclass(frozen=True)
class Route:
    detector: Any  # detector.inference.Detector
    threshold: float
    path: str


@dataclass(frozen=True)
class ModelSet:
    """An immutable snapshot: routing plus one loaded detector per checkpoint path."""

    routing: RoutingConfig
    detectors: Mapping[str, Any]  # path -> Detector
    generation: int = 0
    file_ids: Mapping[str, tuple[int, int]] = field(default_factory=dict)

    def route(self, camera_id: str, product: str | None) -> Route | None:
        path = self.routing.resolve(camera_id, product)
        if path is None:
            return None
        det = self.detectors[path]
        thr = self.routing.threshold_override(camera_id, product)
        return Route(det, float(det.threshold_for(product) if thr is None else thr), path)

    def versions(self) -> dict[str, str]:
        return {path: det.version for path, det in self.detectors.items()}


class ModelHolder:
    """Holds the active :class:`ModelSet`; a new one is staged and activated between batches."""

    def __init__(self, loader: Callable[[str], Any]):
        self._loader = loader
        self._lock = threading.Lock()
        self._current: ModelSet | None = None
        self._pending: ModelSet | None = None
        self._generation = 0

    @property
    def current(self) -> ModelSet:
        if self._current is None:
            raise RuntimeError("no models loaded")
        return self._current

    @property
    def loaded(self) -> bool:
        return self._current is not None

    @property
    def has_pending(self) -> bool:
        return self._pending is not None

    def build(self, routing: RoutingConfig) -> ModelSet:
        """Load every checkpoint of ``routing`` (reusing unchanged files of the current set)."""
        base = self._current
        detectors: dict[str, Any] = {}
        ids: dict[str, tuple[int, int]] = {}
        for path in routing.paths():
            try:
                fid = _file_id(path)
            except OSError as exc:
                from detector.checkpoint import CheckpointError

                raise CheckpointError(f"checkpoint {path}: {exc.strerror or exc}") from None
            if base is not None and path in base.detectors and base.file_ids.get(path) == fid:
                detectors[path] = base.detectors[path]
            else:
                detectors[path] = self._loader(path)
            ids[path] = fid
        with self._lock:
            self._generation += 1
            gen = self._generation
        return ModelSet(routing, detectors, gen, ids)

    def load(self, routing: RoutingConfig) -> ModelSet:
        """Build and activate immediately (at start-up)."""
        ms = self.build(routing)
        with self._lock:
            self._current = ms
            self._pending = None
        return ms

    def stage(self, models: ModelSet) -> None:
        """Hand over a new snapshot; it becomes active at the next batch boundary."""
        with self._lock:
            self._pending = models

    def activate(self) -> ModelSet | None:
        """Called by the service between batches: switch to the staged snapshot, if any."""
        with self._lock:
            if self._pending is None:
                return None
            old, self._current, self._pending = self._current, self._pending, None
        log.info("models swapped", extra={"kv": {
            "generation": self._current.generation,
            "versions": ",".join(sorted(set(self._current.versions().values()))),
            "previous": ",".join(sorted(set(old.versions().values()))) if old else "",
        }})
        return self._current

    def reload_async(self, routing_factory: Callable[[], RoutingConfig]) -> threading.Thread:
        """Re-read the routing and checkpoints in a thread and stage the result (errors keep the old set)."""

        def work() -> None:
            try:
                self.stage(self.build(routing_factory()))
                log.info("new models staged; active from the next batch")
            except Exception as exc:  # noqa: BLE001 - a bad new config must not stop the service
                log.error("model reload failed, keeping the active models", extra={"kv": {"error": str(exc)}})

        t = threading.Thread(target=work, name="model-reload", daemon=True)
        t.start()
        return t
