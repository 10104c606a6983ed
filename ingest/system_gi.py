"""GObject introspection (``gi``) from the operating system, for Aravis and GStreamer.

The GenICam source (Aravis) and the RTSP test server (GStreamer) reach their C libraries
through PyGObject.  linewatch runs in a plain virtual environment, so instead of building
PyGObject from PyPI (it compiles against the system's GLib and needs its development headers,
a C toolchain and meson on every machine) it loads the ``gi`` package the distribution ships
with those libraries (Debian: ``python3-gi``), and nothing else from the system's
site-packages.  That copy is compiled for the system Python, so the virtual environment must
use the same Python minor version (Debian 12: 3.11); anything else gets a clear error.

``LINEWATCH_GI_PATH`` names the directory holding ``gi/`` when it is not in the usual places.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from types import ModuleType

SYSTEM_DIRS = ("/usr/lib/python3/dist-packages", f"/usr/lib/python3.{sys.version_info.minor}/site-packages",
               f"/usr/lib64/python3.{sys.version_info.minor}/site-packages")


class SystemLibraryMissing(RuntimeError):
    """A system package linewatch needs for this source is not installed."""


def load_gi() -> ModuleType:
    """``import gi``: the environment's own if it has one, else the operating system's."""
    if "gi" in sys.modules:
        return sys.modules["gi"]
    try:
        import gi

        return gi
    except ImportError:
        pass
    dirs = [d for d in (os.environ.get("LINEWATCH_GI_PATH"), *SYSTEM_DIRS) if d]
    spec = importlib.machinery.PathFinder.find_spec("gi", dirs)
    if spec is None or spec.loader is None:
        raise SystemLibraryMissing(
            "PyGObject not found: install Debian's python3-gi (apt-get install python3-gi) "
            f"or set LINEWATCH_GI_PATH to the directory holding gi/ (looked in {', '.join(dirs)})")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gi"] = module
    try:
        spec.loader.exec_module(module)
    except ImportError as exc:
        del sys.modules["gi"]
        raise SystemLibraryMissing(
            f"the system's PyGObject in {os.path.dirname(os.path.dirname(spec.origin or ''))} does not load into "
            f"Python {sys.version_info.major}.{sys.version_info.minor} ({exc}); it is built for the system Python: "
            "use a virtual environment of the same Python version") from exc
    return module


def require(namespace: str, version: str, package: str) -> ModuleType:
    """``gi.repository.<namespace>`` at ``version``; ``package`` is the Debian package to name if missing."""
    gi = load_gi()
    try:
        gi.require_version(namespace, version)
    except ValueError as exc:
        raise SystemLibraryMissing(f"{namespace} {version} not found ({exc}): apt-get install {package}") from exc
    return importlib.import_module(f"gi.repository.{namespace}")
