"""GenICam cameras (GigE Vision, USB3 Vision) through Aravis.

``genicam:[DEVICE][,key=value,...]`` — ``DEVICE`` is what Aravis opens: the camera's id
(``<vendor>-<model>-<serial>``, as ``arv-tool-0.8`` lists it), its IP address, or nothing for the
first camera found.  Options (also the ``linewatch-ingest run`` flags of the same name):

================  ======================================================================
``pixel_format``  ``Mono8`` (default), ``RGB8``, ``BGR8``, or a Bayer 8-bit format
                  (``BayerRG8``, ``BayerGR8``, ``BayerGB8``, ``BayerBG8``: demosaiced to colour)
``fps``           the camera's acquisition frame rate (free run); default: the camera's
``exposure_us``   exposure time in microseconds (auto exposure is switched off)
``gain_db``       analog gain in dB (auto gain is switched off)
``trigger``       ``off`` (free run, default), ``software`` (linewatch triggers one frame per
                  read, paced to ``fps``), or a hardware line such as ``Line0`` (the camera
                  waits for the line; no frame for a while is not an error)
``width``,        region of interest from the top-left corner
``height``
================  ======================================================================

Frames carry the camera's own clock and counter: ``captured_at`` is the camera's timestamp
(start of exposure on most cameras) mapped to UTC; the offset to the host clock is the smallest
``host arrival - camera timestamp`` seen since the stream opened (transfer delay is never
negative), allowed to grow by 100 ppm of elapsed time so clock drift in either direction is
followed.  Cameras without timestamps fall back to the host arrival time.  The camera's frame
id is kept in ``Frame.info``; frames it skipped (frame id gaps: lost on the wire or incomplete)
are reported as ``frames_skipped``, so ``seq`` shows the gap downstream.

A camera that drops off the network stops delivering buffers: the read times out (free run) or
a control read fails (triggered), :class:`~ingest.sources.SourceError` is raised, and the runner
reconnects with backoff.  Needs Debian's ``gir1.2-aravis-0.8`` and ``python3-gi`` (see
:mod:`ingest.system_gi`).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import Any

import cv2
import numpy as np

from ingest.frames import Frame
from ingest.sources import FrameSource, Pacer, SourceError, SourceTimeout
from ingest.system_gi import require

log = logging.getLogger(__name__)

# GenICam Bayer names give the colour order of the first row; OpenCV's *RGGB*-style names agree
_BAYER = {"BayerRG8": cv2.COLOR_BayerRGGB2BGR, "BayerGR8": cv2.COLOR_BayerGRBG2BGR,
          "BayerGB8": cv2.COLOR_BayerGBRG2BGR, "BayerBG8": cv2.COLOR_BayerBGGR2BGR}
PIXEL_FORMATS = ("Mono8", "RGB8", "BGR8", *_BAYER)
_DRIFT_PPM = 100e-6
_FRAME_ID_WRAP = 65535  # GigE Vision 1.x block ids count 1..65535, then start at 1 again


def aravis():
    return require("Aravis", "0.8", "gir1.2-aravis-0.8")


def to_bgr(data: bytes, width: int, height: int, pixel_format: str) -> np.ndarray:
    """A camera buffer as OpenCV's image: ``HxW`` grey for Mono8, ``HxWx3`` BGR otherwise."""
    raw = np.frombuffer(data, np.uint8)
    channels = 3 if pixel_format in ("RGB8", "BGR8") else 1
    if raw.size < width * height * channels:
        raise ValueError(f"{pixel_format} buffer of {raw.size} bytes is too small for {width}x{height}")
    image = raw[: width * height * channels].reshape((height, width, channels) if channels == 3 else (height, width))
    if pixel_format == "RGB8":
        return cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if pixel_format in _BAYER:
        return cv2.cvtColor(image, _BAYER[pixel_format])
    return image.copy()  # the buffer goes back to the camera


class ClockMapper:
    """Camera timestamps (ns, camera clock) -> UTC, anchored on the host clock (see the module doc)."""

    def __init__(self) -> None:
        self.offset_ns: int | None = None
        self._last_host_ns = 0

    def to_utc(self, device_ns: int, host_ns: int) -> datetime:
        if device_ns <= 0:
            return datetime.fromtimestamp(host_ns / 1e9, timezone.utc)
        seen = host_ns - device_ns
        if self.offset_ns is None:
            self.offset_ns = seen
        else:
            allowed = self.offset_ns + int((host_ns - self._last_host_ns) * _DRIFT_PPM)
            self.offset_ns = min(seen, allowed)
        self._last_host_ns = host_ns
        return datetime.fromtimestamp((device_ns + self.offset_ns) / 1e9, timezone.utc)


def frames_between(last: int | None, current: int) -> int:
    """Frames the camera numbered between two delivered ones (0: consecutive)."""
    if last is None:
        return 0
    if current > last:
        return current - last - 1
    if last > _FRAME_ID_WRAP - 1000 and current < 1000:  # 16-bit block id wrapped (0 is never used)
        return current + _FRAME_ID_WRAP - last - 1
    return 0  # the camera restarted its counter


class GenICamSource(FrameSource):
    def __init__(self, device: str | None = None, *, fps: float | None = None, pixel_format: str = "Mono8",
                 exposure_us: float | None = None, gain_db: float | None = None, trigger: str = "off",
                 width: int | None = None, height: int | None = None, open_timeout_s: float = 10.0,
                 read_timeout_s: float = 5.0, buffers: int = 8):
        super().__init__(fps=None)  # the camera paces itself; fps is its frame rate
        if pixel_format not in PIXEL_FORMATS:
            raise ValueError(f"pixel format {pixel_format!r} not supported; one of {', '.join(PIXEL_FORMATS)}")
        self.device = device or None
        self.frame_rate = fps
        self.pixel_format = pixel_format
        self.exposure_us, self.gain_db = exposure_us, gain_db
        self.trigger = trigger or "off"
        self.width, self.height = width, height
        self.open_timeout_s, self.read_timeout_s = open_timeout_s, read_timeout_s
        self.buffers = buffers
        self.name = f"genicam:{self.device or 'first'}"
        # software trigger: one trigger per read, at most fps a second
        self._trigger_pacer = Pacer(fps if self.trigger == "software" else None)
        self._cam: Any = None
        self._stream: Any = None
        self._clock = ClockMapper()
        self._last_frame_id: int | None = None
        self._lost = False  # the camera stopped answering: close without talking to it
        self.skipped = 0  # frames the camera numbered but never delivered complete

    def set_stop_event(self, stop) -> None:
        super().set_stop_event(stop)
        self._trigger_pacer.stop = stop

    def open(self) -> None:
        self.close()
        Aravis = aravis()
        try:
            cam = Aravis.Camera.new(self.device)
        except Exception as exc:  # gi's GLib.Error: not found, not reachable, access denied
            raise SourceError(f"cannot open GenICam camera {self.device or '(first found)'}: {exc}") from exc
        try:
            self._configure(cam)
            stream = cam.create_stream(None, None)
            payload = cam.get_payload()
            for _ in range(self.buffers):
                stream.push_buffer(Aravis.Buffer.new_allocate(payload))
            cam.start_acquisition()
        except Exception as exc:  # noqa: BLE001 - GLib.Error from any feature write
            raise SourceError(f"cannot configure {self.name}: {exc}") from exc
        self._cam, self._stream = cam, stream
        self._clock = ClockMapper()
        self._last_frame_id = None
        self._lost = False
        self.is_open = True
        log.info("opened %s: %s %s, %s %dx%d, trigger %s", self.name, cam.get_vendor_name(), cam.get_model_name(),
                 self.pixel_format, *cam.get_region()[2:], self.trigger)

    def _configure(self, cam) -> None:
        available = cam.dup_available_pixel_formats_as_strings() or []
        if self.pixel_format not in available:
            raise SourceError(f"{self.name} offers {', '.join(available)}, not {self.pixel_format}")
        cam.set_pixel_format_from_string(self.pixel_format)
        if self.width or self.height:
            _, _, w, h = cam.get_region()
            cam.set_region(0, 0, self.width or w, self.height or h)
        if self.exposure_us is not None:
            if cam.is_exposure_auto_available():
                cam.set_exposure_time_auto(0)  # ArvAuto.OFF
            cam.set_exposure_time(self.exposure_us)
        if self.gain_db is not None:
            if cam.is_gain_auto_available():
                cam.set_gain_auto(0)
            cam.set_gain(self.gain_db)
        if self.trigger == "off":
            cam.clear_triggers()
            if self.frame_rate:
                cam.set_frame_rate(self.frame_rate)
        else:
            source = "Software" if self.trigger == "software" else self.trigger
            sources = cam.dup_available_trigger_sources() or []
            if source not in sources:
                raise SourceError(f"{self.name} has trigger sources {', '.join(sources)}, not {source}")
            cam.set_trigger(source)

    def read(self) -> Frame | None:
        if not self.is_open or self._stream is None:
            raise SourceError(f"{self.name} is not open")
        if self.trigger == "software":
            self._trigger_pacer.wait()
            try:
                self._cam.software_trigger()
            except Exception as exc:  # noqa: BLE001 - GLib.Error: the camera is gone
                self._lost = True
                raise SourceError(f"{self.name}: software trigger failed: {exc}") from exc
        waited = 0.0
        while True:
            buf = self._stream.timeout_pop_buffer(int(min(self.read_timeout_s, 0.5) * 1e6))
            if buf is not None:
                frame = self._take(buf)
                if frame is not None:
                    return frame
                continue
            waited += min(self.read_timeout_s, 0.5)
            stop = self.pacer.stop
            if stop is not None and stop.is_set():
                raise SourceError(f"{self.name}: stopped while waiting for a frame")
            if waited < self.read_timeout_s:
                continue
            if self.trigger in ("off", "software"):
                self._lost = True
                raise SourceTimeout(f"{self.name}: no frame within {self.read_timeout_s:.1f}s")
            self._probe()  # hardware trigger: an idle line is fine while the camera answers
            waited = 0.0

    def _probe(self) -> None:
        try:
            self._cam.get_frame_rate()
        except Exception as exc:  # noqa: BLE001 - GLib.Error: control channel lost
            self._lost = True
            raise SourceError(f"{self.name} does not answer: {exc}") from exc

    def _take(self, buf) -> Frame | None:
        """The frame in a popped buffer, or ``None`` for an incomplete one; the buffer goes back."""
        Aravis = aravis()
        host_ns = time.time_ns()
        try:
            frame_id = buf.get_frame_id()
            skipped = frames_between(self._last_frame_id, frame_id)
            self._last_frame_id = frame_id
            if buf.get_status() != Aravis.BufferStatus.SUCCESS:
                self.skipped += skipped + 1
                log.warning("%s: frame %d incomplete (%s)", self.name, frame_id, buf.get_status().value_nick)
                return None
            image = to_bgr(buf.get_image_data(), buf.get_image_width(), buf.get_image_height(), self.pixel_format)
            device_ns = buf.get_timestamp()
            captured_at = self._clock.to_utc(device_ns, buf.get_system_timestamp() or host_ns)
        finally:
            self._stream.push_buffer(buf)
        skipped += self.skipped
        self.skipped = 0
        return Frame(image=image, captured_at=captured_at,
                     info={"source": self.name, "device_frame_id": frame_id, "device_timestamp_ns": device_ns,
                           "frames_skipped": skipped, "pixel_format": self.pixel_format})

    def close(self) -> None:
        cam, self._cam, self._stream = self._cam, None, None
        # a lost camera would make every control write wait out its retries (seconds each);
        # dropping the objects closes the sockets, and the camera frees itself when its heartbeat expires
        if cam is not None and not self._lost:
            try:
                cam.stop_acquisition()
            except Exception:  # noqa: BLE001 - closing a camera that is gone
                pass
        super().close()


def parse_spec(rest: str) -> tuple[str | None, dict[str, Any]]:
    """``DEVICE,key=value,...`` -> (device, options) for :class:`GenICamSource`."""
    device, *items = rest.split(",")
    options: dict[str, Any] = {}
    for item in filter(None, items):
        key, _, value = item.partition("=")
        key = key.strip()
        if key in ("fps", "exposure_us", "gain_db"):
            options[key] = float(value)
        elif key in ("width", "height", "buffers"):
            options[key] = int(value)
        elif key in ("pixel_format", "trigger"):
            options[key] = value.strip()
        else:
            raise ValueError(f"unknown genicam option {key!r}")
    return device.strip() or None, options
