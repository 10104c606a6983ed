"""OPC UA sink: an asyncua server with one object per camera, holding its newest verdict.

Address space (namespace ``LINEWATCH_OPCUA_NAMESPACE``, default ``urn:linewatch``; string node ids,
so a PLC program can name them without browsing)::

    Objects/Linewatch                       ns=<i>;s=Linewatch
      <line>                                ns=<i>;s=<line>
        <camera>                            ns=<i>;s=<line>/<camera>
          Verdict       String              "reject" | "pass"
          IsAnomalous   Boolean
          Score         Double
          Threshold     Double
          PartId        String              "" when the frame had none
          Product       String
          ModelVersion  String
          FrameId       String
          Seq           Int64               the camera's frame counter
          CapturedAt    DateTime            camera capture time (UTC)
          InferredAt    DateTime
          Count         UInt64              verdicts written for this camera; written last, so a
                                            client that subscribes to it reads a consistent set

Variables are read-only for clients.  A batch counts as delivered once the values are in the
server's address space (subscribed clients are notified from there).  Security: the endpoint
offers ``None`` (plain TCP) — keep it on the machine network, or put it behind the plant's
OPC UA gateway.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from .loop import Item
from .settings import BridgeSettings
from .verdict import Verdict

log = logging.getLogger("linewatch.bridge.opcua")

# variable name -> (OPC UA type, the verdict's value)
_FIELDS: dict[str, tuple[str, Any]] = {
    "Verdict": ("String", lambda v: v.verdict),
    "IsAnomalous": ("Boolean", lambda v: v.verdict == "reject"),
    "Score": ("Double", lambda v: v.score),
    "Threshold": ("Double", lambda v: v.threshold),
    "PartId": ("String", lambda v: v.part_id or ""),
    "Product": ("String", lambda v: v.product or ""),
    "ModelVersion": ("String", lambda v: v.model_version),
    "FrameId": ("String", lambda v: v.frame_id),
    "Seq": ("Int64", lambda v: v.seq),
    "CapturedAt": ("DateTime", lambda v: v.captured_at),
    "InferredAt": ("DateTime", lambda v: v.inferred_at),
}
_DEFAULTS = {"String": "", "Boolean": False, "Double": 0.0, "Int64": 0, "UInt64": 0, "DateTime": datetime(1601, 1, 1)}


class OpcUaSink:
    kind = "opcua"

    def __init__(self, settings: BridgeSettings) -> None:
        try:
            import asyncua  # noqa: F401
        except ImportError as exc:  # an optional extra
            raise RuntimeError("the OPC UA bridge needs asyncua: pip install 'linewatch[bridges]'") from exc
        self.settings = settings
        self.target = settings.opcua_endpoint
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="opcua-server", daemon=True)
        self._server: Any = None
        self._ns = 0
        self._root: Any = None
        self._cameras: dict[tuple[str, str], dict[str, Any]] = {}
        self._counts: dict[tuple[str, str], int] = {}
        self._running = False

    def _call(self, coro, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> None:
        self._thread.start()
        self._call(self._start())
        log.info("OPC UA server on %s (namespace %s = ns=%d)", self.target, self.settings.opcua_namespace, self._ns)

    async def _start(self) -> None:
        from asyncua import Server, ua

        server = Server()
        await server.init()
        server.set_endpoint(self.settings.opcua_endpoint)
        server.set_server_name("linewatch bridge")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        self._ns = await server.register_namespace(self.settings.opcua_namespace)
        self._root = await server.nodes.objects.add_folder(ua.NodeId("Linewatch", self._ns),
                                                             ua.QualifiedName("Linewatch", self._ns))
        await server.start()
        self._server = server
        self._running = True

    def connected(self) -> bool:
        return self._running

    async def _camera_nodes(self, line: str, camera: str) -> dict[str, Any]:
        from asyncua import ua

        key = (line, camera)
        if key in self._cameras:
            return self._cameras[key]
        ns = self._ns
        line_node = ua.NodeId(line, ns)
        try:
            folder = self._server.get_node(line_node)
            await folder.read_browse_name()
        except ua.UaStatusCodeError:
            folder = await self._root.add_folder(line_node, ua.QualifiedName(line, ns))
        obj = await folder.add_object(ua.NodeId(f"{line}/{camera}", ns), ua.QualifiedName(camera, ns))
        nodes = {}
        for name, (vtype, _) in [*_FIELDS.items(), ("Count", ("UInt64", None))]:
            nodes[name] = await obj.add_variable(ua.NodeId(f"{line}/{camera}/{name}", ns), ua.QualifiedName(name, ns),
                                                 _DEFAULTS[vtype],
                                                 varianttype=getattr(ua.VariantType, vtype))
        self._cameras[key] = nodes
        return nodes

    async def _write(self, verdicts: list[Verdict]) -> None:
        from asyncua import ua

        for v in verdicts:
            nodes = await self._camera_nodes(v.line, v.camera_id)
            for name, (vtype, get) in _FIELDS.items():
                await nodes[name].write_value(ua.Variant(get(v), getattr(ua.VariantType, vtype)))
            count = self._counts.get(v.camera_key, 0) + 1
            self._counts[v.camera_key] = count
            await nodes["Count"].write_value(ua.Variant(count, ua.VariantType.UInt64))

    def deliver(self, items: Sequence[Item], timeout_s: float) -> set[str]:
        # the nodes hold the newest verdict; an older one replayed after a restart is not written back
        newest = [item.verdict for item in items if item.newest]
        if newest:
            try:
                self._call(self._write(newest), timeout=timeout_s)
            except (OSError, TimeoutError) as exc:
                log.error("writing %d verdicts into the address space failed: %s", len(newest), exc)
                return set()
        return {item.verdict.frame_id for item in items}

    def close(self) -> None:
        if self._running:
            self._running = False
            try:
                self._call(self._server.stop(), timeout=10)
            except Exception:  # noqa: BLE001 - closing on the way out
                log.exception("error while stopping the OPC UA server")
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
