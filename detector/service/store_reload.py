"""Hot reload from the model store: newly active versions and dashboard thresholds.

The registry (storage) publishes, after each commit, ``<store>/<product>/active.json`` and
``<store>/thresholds.json`` (:mod:`detector.model_store`).  The service's routing is the
routing file / ``--model`` with the store laid over it:

* every product with an active version is routed to that version's checkpoint (the registry is
  the authority for the products it manages; camera routes of the routing file still win);
* per-camera thresholds from ``thresholds.json`` win over the routing file's.

Between two batches the service calls :meth:`StoreReloader.poll`: at most once a second it
``stat``s the pointer files (no reads); when one was replaced, the routing and the checkpoints
are rebuilt in a background thread (unchanged checkpoint files are reused, so a threshold change
loads nothing) and staged; the service activates the new snapshot before its next batch.  So no
frame is dropped or scored twice, and every result carries the version that scored it.  A new
checkpoint that does not load is logged and the current models keep serving.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from detector.model_store import ModelStore, ModelStoreError, StoreWatcher

from .routing import ModelHolder, RoutingConfig, RoutingError, load_routing

log = logging.getLogger("linewatch.detector.service")


class StoreRouting:
    """The routing factory: routing file / default model, overlaid with the model store."""

    def __init__(self, routes: str | Path | None, default_model: str | Path | None, store: ModelStore | None):
        self.routes = routes
        self.default_model = default_model
        self.store = store

    def __call__(self) -> RoutingConfig:
        cfg = load_routing(self.routes, self.default_model) if (self.routes or self.default_model) \
            else RoutingConfig()
        if self.store is not None:
            try:
                pointers = self.store.active_pointers()
                cameras = self.store.read_thresholds()
            except ModelStoreError as exc:
                raise RoutingError(str(exc)) from None
            cfg = cfg.model_copy(update={
                "products": {**cfg.products, **{p: ptr.path for p, ptr in pointers.items()}},
                "thresholds": cfg.thresholds.model_copy(update={"cameras": {**cfg.thresholds.cameras, **cameras}}),
            })
        if not cfg.paths():
            where = f" or an active version in the model store {self.store.root}" if self.store else ""
            raise RoutingError("no model configured: give --model (LINEWATCH_DETECTOR_MODEL), a routing file "
                               f"(--routes){where} (linewatch-detector register --product P --checkpoint FILE)")
        return cfg


class StoreReloader:
    """Polled by the service between batches; rebuilds the models in the background on a change."""

    def __init__(self, holder: ModelHolder, routing: StoreRouting, interval_s: float = 1.0):
        assert routing.store is not None
        self.holder = holder
        self.routing = routing
        self.watcher = StoreWatcher(routing.store, interval_s)
        self._thread: threading.Thread | None = None

    def mark_loaded(self) -> None:
        """The models in the holder reflect the store as it is now."""
        self.watcher.mark_seen()

    def poll(self) -> None:
        # one rebuild at a time; a change that arrives meanwhile is seen at the next poll after it
        if self._thread is not None and self._thread.is_alive():
            return
        if self.watcher.changed():
            log.info("model store changed: reloading models in the background",
                     extra={"kv": {"store": str(self.routing.store.root)}})
            self._thread = self.holder.reload_async(self.routing)

    def wait(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
