"""Frame sources behind one interface.

A :class:`FrameSource` is opened, read frame by frame and closed:

* :meth:`FrameSource.read` returns the next :class:`~ingest.frames.Frame`, ``None`` at the end
  of a finite source (folder or video file without loop), and raises :class:`SourceError` when
  the camera fails (not opened, read failed, read timed out).  It never blocks longer than the
  source's timeouts.
* After a :class:`SourceError` the caller closes the source and opens it again later (the
  reconnect policy with backoff lives in :mod:`ingest.runner`).
* ``fps`` paces :meth:`FrameSource.next_frame` (the runner's call) to at most that rate.

Implementations: :class:`OpenCVSource` (device index, RTSP/HTTP URL, video file),
:class:`ingest.genicam.GenICamSource` (GigE Vision / USB3 Vision through Aravis), :class:`FolderSource` (sorted image files, optional loop) and
:class:`ingest.simulator.LineSimulator`.  :func:`make_source` builds one from a spec string.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from ingest.frames import Frame, content_type_for_path, utcnow

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


GSTREAMER_UNSUPPORTED = (
    "GStreamer pipelines are not supported: the OpenCV wheel linewatch installs (opencv-python-headless) "
    "is built without GStreamer, so a pipeline could never open. Use the camera's rtsp:// URL (OpenCV's "
    "FFmpeg backend) or genicam: for GigE Vision / USB3 Vision cameras")


class SourceError(RuntimeError):
    """The source failed (open or read); close it and reconnect later."""


class SourceTimeout(SourceError):
    """Opening or reading took longer than the source's timeout."""


class Pacer:
    """Sleeps so that successive :meth:`wait` calls return at most ``fps`` times a second."""

    def __init__(self, fps: float | None, stop: threading.Event | None = None):
        self.interval = 1.0 / fps if fps and fps > 0 else 0.0
        self.stop = stop
        self._next = None

    def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        if self._next is None:
            self._next = now
        delay = self._next - now
        if delay > 0:
            if self.stop is not None:
                self.stop.wait(delay)
            else:
                time.sleep(delay)
        # no catching up after a stall: schedule from now if we fell behind
        self._next = max(self._next, time.monotonic() - self.interval) + self.interval


class FrameSource(ABC):
    """Common interface of all frame sources."""

    #: a short description for logs
    name: str = "source"

    def __init__(self, *, fps: float | None = None):
        self.fps = fps
        self.pacer = Pacer(fps)
        self.is_open = False

    def set_stop_event(self, stop: threading.Event) -> None:
        """Lets pacing waits end at once when the runner stops."""
        self.pacer.stop = stop

    @abstractmethod
    def open(self) -> None:
        """Connect / open; raises :class:`SourceError`."""

    @abstractmethod
    def read(self) -> Frame | None:
        """Next frame; ``None`` at the end of a finite source; :class:`SourceError` on failure."""

    def close(self) -> None:
        self.is_open = False

    def next_frame(self) -> Frame | None:
        """:meth:`read`, paced to ``fps``."""
        self.pacer.wait()
        return self.read()

    def __enter__(self) -> "FrameSource":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self):
        while True:
            frame = self.next_frame()
            if frame is None:
                return
            yield frame


class _CallWorker:
    """Runs blocking calls (OpenCV open/read) in a daemon thread, with a timeout.

    A call that does not return in time raises :class:`SourceTimeout`; the worker is then
    abandoned (``dead``) together with whatever it holds, and the source makes a new one.
    """

    def __init__(self, name: str):
        self._requests: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()
        self.dead = False

    def _loop(self) -> None:
        while True:
            item = self._requests.get()
            if item is None:
                return
            fn, args, reply = item
            try:
                reply.put((True, fn(*args)))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                reply.put((False, exc))

    def call(self, fn: Callable, *args, timeout: float) -> Any:
        if self.dead:
            raise SourceError("worker abandoned after a timeout")
        reply: queue.Queue = queue.Queue(maxsize=1)
        self._requests.put((fn, args, reply))
        try:
            ok, value = reply.get(timeout=timeout)
        except queue.Empty:
            self.dead = True
            raise SourceTimeout(f"{getattr(fn, '__name__', 'call')} did not return within {timeout:.1f}s") from None
        if not ok:
            raise value
        return value

    def stop(self) -> None:
        self._requests.put(None)


class OpenCVSource(FrameSource):
    """``cv2.VideoCapture``: a device index, an RTSP/HTTP URL or a video file.

    ``target`` kinds: an ``int`` (or digits) is a device index; a string with ``://`` is a
    network stream (OpenCV's FFmpeg backend, which the PyPI wheel includes); anything else is a
    video file.  GStreamer pipeline strings are refused: the PyPI OpenCV is built without
    GStreamer, so they could never open (use the ``rtsp://`` URL, or ``genicam:`` for industrial
    cameras).  Opening and every read run in a helper thread with ``open_timeout_s`` /
    ``read_timeout_s``, so a stalled camera raises :class:`SourceTimeout` instead of hanging.  A
    video file ends (``None``) at its last frame unless ``loop``; for live kinds a failed read is
    a :class:`SourceError`.

    Network streams are read as fast as they arrive by a reader thread that keeps only the newest
    frame (:class:`_LatestFrame`), so a slower ``fps`` never hands out frames that waited in
    FFmpeg's buffers; FFmpeg is opened for low delay (small probe, no input buffering) and, for
    RTSP, with ``rtsp_transport`` (``tcp`` by default: no smeared frames from lost UDP packets).
    ``OPENCV_FFMPEG_CAPTURE_OPTIONS`` set in the environment replaces these options.
    """

    def __init__(self, target: int | str, *, fps: float | None = None, loop: bool = False,
                 width: int | None = None, height: int | None = None,
                 open_timeout_s: float = 10.0, read_timeout_s: float = 5.0,
                 api_preference: int | None = None, rtsp_transport: str = "tcp"):
        super().__init__(fps=fps)
        if isinstance(target, str) and target.strip().isdigit():
            target = int(target)
        if isinstance(target, str) and "!" in target and "://" not in target:
            raise ValueError(GSTREAMER_UNSUPPORTED)
        if rtsp_transport not in ("tcp", "udp"):
            raise ValueError(f"rtsp_transport must be tcp or udp, not {rtsp_transport!r}")
        self.target = target
        if isinstance(target, int):
            self.kind = "device"
        elif "://" in target:
            self.kind = "stream"
        else:
            self.kind = "file"
        self.loop = loop
        self.width, self.height = width, height
        self.open_timeout_s, self.read_timeout_s = open_timeout_s, read_timeout_s
        self.api_preference = cv2.CAP_FFMPEG if self.kind == "stream" and api_preference is None else \
            (api_preference if api_preference is not None else cv2.CAP_ANY)
        self.rtsp_transport = rtsp_transport
        self.name = f"opencv:{self.kind}:{target}"
        self._cap = None
        self._worker: _CallWorker | None = None
        self._latest: _LatestFrame | None = None

    def ffmpeg_options(self) -> str:
        """FFmpeg's capture options for a network stream (``key;value|key;value``)."""
        options = "fflags;nobuffer|flags;low_delay|analyzeduration;1000000|probesize;524288"
        if str(self.target).lower().startswith(("rtsp://", "rtsps://")):
            options = f"rtsp_transport;{self.rtsp_transport}|" + options
        return os.environ.get("OPENCV_FFMPEG_CAPTURE_OPTIONS") or options

    def _make_capture(self):
        params: list[int] = []
        if self.kind in ("stream", "device"):
            params += [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.open_timeout_s * 1000),
                       cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.read_timeout_s * 1000)]
        if self.kind == "stream":
            # OpenCV reads FFmpeg's options from the environment when the capture opens
            saved = os.environ.get("OPENCV_FFMPEG_CAPTURE_OPTIONS")
            os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = self.ffmpeg_options()
            try:
                cap = cv2.VideoCapture(self.target, self.api_preference, params)
            finally:
                if saved is None:
                    os.environ.pop("OPENCV_FFMPEG_CAPTURE_OPTIONS", None)
        elif params:
            cap = cv2.VideoCapture(self.target, self.api_preference, params)
        else:
            cap = cv2.VideoCapture(self.target, self.api_preference)
        if not cap.isOpened():
            cap.release()
            return None
        if self.width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        if self.height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        return cap

    def open(self) -> None:
        self.close()
        if self.kind == "file" and not Path(str(self.target)).is_file():
            raise SourceError(f"video file {self.target} not found")
        self._worker = _CallWorker(f"capture-{self.name}")
        cap = self._worker.call(self._make_capture, timeout=self.open_timeout_s)
        if cap is None:
            raise SourceError(f"cannot open {self.name}")
        if self.kind == "stream":
            self._latest = _LatestFrame(cap, self.name)  # owns the capture from here on
        else:
            self._cap = cap
        self.is_open = True

    def _read_once(self):
        return self._cap.read()

    def read(self) -> Frame | None:
        if self._latest is not None:
            try:
                image, arrived = self._latest.take(self.read_timeout_s)
            except SourceError:
                self.is_open = False
                raise
            return Frame(image=image, captured_at=arrived, info={"source": self.name})
        if not self.is_open or self._cap is None or self._worker is None:
            raise SourceError(f"{self.name} is not open")
        try:
            ok, image = self._worker.call(self._read_once, timeout=self.read_timeout_s)
        except SourceTimeout:
            self._cap = None  # left to the abandoned worker thread
            self.is_open = False
            raise
        if ok and image is not None:
            return Frame(image=image, captured_at=utcnow(), info={"source": self.name})
        if self.kind == "file":
            if self.loop:
                self._worker.call(self._cap.set, cv2.CAP_PROP_POS_FRAMES, 0, timeout=self.read_timeout_s)
                ok, image = self._worker.call(self._read_once, timeout=self.read_timeout_s)
                if ok and image is not None:
                    return Frame(image=image, captured_at=utcnow(), info={"source": self.name})
                raise SourceError(f"{self.name}: cannot rewind")
            return None
        raise SourceError(f"{self.name}: read failed")

    def close(self) -> None:
        cap, worker, latest = self._cap, self._worker, self._latest
        self._cap, self._worker, self._latest = None, None, None
        if latest is not None:
            latest.stop(timeout=self.read_timeout_s)
        if cap is not None and worker is not None and not worker.dead:
            try:
                worker.call(cap.release, timeout=self.read_timeout_s)
            except Exception:  # noqa: BLE001 - closing a broken camera
                pass
        if worker is not None:
            worker.stop()
        super().close()


class _LatestFrame:
    """Reads a live stream as fast as it comes in a daemon thread, keeping only the newest frame.

    ``take`` returns a frame newer than the last one taken, with its arrival time, or raises
    :class:`SourceError` once the stream failed (server gone, FFmpeg read timeout) and
    :class:`SourceTimeout` when nothing new came within the timeout.
    """

    def __init__(self, cap, name: str):
        self._cap = cap
        self._cond = threading.Condition()
        self._frame: tuple[np.ndarray, Any] | None = None
        self._count = 0
        self._taken = 0
        self._error: str | None = None
        self._stopping = False
        self.name = name
        self._thread = threading.Thread(target=self._run, name=f"reader-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stopping:
                ok, image = self._cap.read()
                arrived = utcnow()
                with self._cond:
                    if not ok or image is None:
                        self._error = f"{self.name}: stream ended or stalled"
                        self._cond.notify_all()
                        return
                    self._frame = (image, arrived)
                    self._count += 1
                    self._cond.notify_all()
        finally:
            self._cap.release()

    def take(self, timeout: float) -> tuple[np.ndarray, Any]:
        with self._cond:
            if not self._cond.wait_for(lambda: self._count > self._taken or self._error is not None, timeout):
                raise SourceTimeout(f"{self.name}: no frame within {timeout:.1f}s")
            if self._count > self._taken and self._frame is not None:
                self._taken = self._count
                return self._frame
            raise SourceError(self._error or f"{self.name}: read failed")

    def stop(self, timeout: float) -> None:
        self._stopping = True
        self._thread.join(timeout)  # a read stuck in FFmpeg is left to the daemon thread


class FolderSource(FrameSource):
    """Replays the image files of a folder in sorted (name) order, paced to ``fps``.

    ``loop`` starts over after the last file.  ``passthrough`` sends JPEG/PNG files as they are
    (no re-encoding; other formats are decoded and encoded as configured).  ``part_from_name``
    uses each file's stem as the part id.  A file that cannot be read is skipped with a warning.
    """

    def __init__(self, folder: str | Path, *, fps: float | None = None, loop: bool = False,
                 passthrough: bool = False, part_from_name: bool = False, recursive: bool = False,
                 limit: int | None = None):
        super().__init__(fps=fps)
        self.folder = Path(folder)
        self.loop = loop
        self.passthrough = passthrough
        self.part_from_name = part_from_name
        self.recursive = recursive
        self.limit = limit
        self.name = f"folder:{self.folder}"
        self.files: list[Path] = []
        self._index = 0
        self.skipped = 0

    def list_files(self) -> list[Path]:
        pattern = "**/*" if self.recursive else "*"
        files = sorted(
            (p for p in self.folder.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
            key=lambda p: str(p.relative_to(self.folder)),
        )
        return files[: self.limit] if self.limit is not None else files

    def open(self) -> None:
        if not self.folder.is_dir():
            raise SourceError(f"folder {self.folder} not found")
        self.files = self.list_files()
        if not self.files:
            raise SourceError(f"no image files in {self.folder}")
        self.is_open = True

    def read(self) -> Frame | None:
        if not self.is_open:
            raise SourceError(f"{self.name} is not open")
        while True:
            if self._index >= len(self.files):
                if not self.loop:
                    return None
                self._index = 0
            path = self.files[self._index]
            self._index += 1
            frame = self._load(path)
            if frame is not None:
                return frame

    def _load(self, path: Path) -> Frame | None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            log.warning("skipping %s: %s", path, exc)
            self.skipped += 1
            return None
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            log.warning("skipping %s: not a readable image", path)
            self.skipped += 1
            return None
        ctype = content_type_for_path(path.name) if self.passthrough else None
        return Frame(
            image=image,
            captured_at=utcnow(),
            part_id=path.stem if self.part_from_name else None,
            encoded=data if ctype else None,
            content_type=ctype,
            info={"source": self.name, "path": str(path)},
        )


def make_source(spec: str, **options: Any) -> FrameSource:
    """Build a source from a spec string (the CLI's ``--source``).

    ==============================  ==================================================
    spec                            source
    ==============================  ==================================================
    ``sim`` / ``sim:KEY=V,...``     :class:`ingest.simulator.LineSimulator` (``seed``,
                                    ``width``, ``height``, ``defect_rate``, ``count``,
                                    ``fault`` dirty-lens|dim|shift, ``fault_after``)
    ``folder:PATH`` or a directory  :class:`FolderSource`
    ``device:N`` or ``N`` (digits)  :class:`OpenCVSource` on camera device N
    ``rtsp://``, ``http(s)://``...  :class:`OpenCVSource` on the network stream
    ``video:PATH`` or a file path   :class:`OpenCVSource` on the video file
    ``genicam:[DEVICE][,K=V,...]``  :class:`ingest.genicam.GenICamSource` (Aravis:
                                    GigE Vision / USB3 Vision; ``pixel_format``,
                                    ``exposure_us``, ``gain_db``, ``trigger``, ``fps``)
    ==============================  ==================================================

    ``options`` go to the source's constructor (e.g. ``fps``, ``loop``); options a source does
    not take are ignored.
    """
    import inspect

    from ingest.simulator import LineSimulator

    def build(cls, *args, **extra):
        accepted = inspect.signature(cls.__init__).parameters
        kwargs = {k: v for k, v in {**options, **extra}.items() if k in accepted and v is not None}
        return cls(*args, **kwargs)

    spec = spec.strip()
    if spec == "sim" or spec.startswith("sim:"):
        extra: dict[str, Any] = {}
        for item in filter(None, spec[4:].split(",")):
            key, _, value = item.partition("=")
            key = key.strip()
            if key in ("seed", "width", "height", "count", "frames_per_part"):
                extra[key] = int(value)
            elif key in ("defect_rate",):
                extra[key] = float(value)
            elif key in ("line_speed",):
                extra[key] = float(value)
            elif key == "fault":  # a camera fault from frame fault_after on (see ingest.simulator.FAULTS)
                extra[key] = value.strip()
            elif key == "fault_after":
                extra[key] = int(value)
            else:
                raise ValueError(f"unknown simulator option {key!r}")
        return build(LineSimulator, **extra)
    if spec.startswith("genicam:"):
        from ingest.genicam import GenICamSource, parse_spec

        device, extra = parse_spec(spec[len("genicam:"):])
        return build(GenICamSource, device, **extra)
    if spec.startswith("folder:"):
        return build(FolderSource, spec[len("folder:"):])
    if spec.startswith("device:"):
        return build(OpenCVSource, int(spec[len("device:"):]))
    if spec.startswith("gst:"):
        raise ValueError(GSTREAMER_UNSUPPORTED)
    if spec.startswith("video:"):
        return build(OpenCVSource, spec[len("video:"):])
    if spec.isdigit():
        return build(OpenCVSource, int(spec))
    if "!" in spec or "://" in spec:
        return build(OpenCVSource, spec)
    if Path(spec).is_dir():
        return build(FolderSource, spec)
    return build(OpenCVSource, spec)
