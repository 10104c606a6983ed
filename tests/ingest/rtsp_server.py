"""A real RTSP server for the tests: GStreamer's RTSP server (Debian gir1.2-gst-rtsp-server-1.0) on 127.0.0.1.

``python -m tests.ingest.rtsp_server --port 8554 --fps 10`` serves a moving test pattern, H.264 in RTP,
at ``rtsp://127.0.0.1:<port>/test`` until SIGTERM; it prints ``ready`` once it listens.
"""

from __future__ import annotations

import argparse
import signal
import sys

from ingest.system_gi import require


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--fps", type=int, default=10)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    args = parser.parse_args()

    Gst = require("Gst", "1.0", "gir1.2-gstreamer-1.0")
    GstRtspServer = require("GstRtspServer", "1.0", "gir1.2-gst-rtsp-server-1.0")
    GLib = require("GLib", "2.0", "gir1.2-glib-2.0")
    Gst.init(None)
    for element, package in (("videotestsrc", "gstreamer1.0-plugins-base"), ("x264enc", "gstreamer1.0-plugins-ugly"),
                             ("rtph264pay", "gstreamer1.0-plugins-good")):
        if Gst.ElementFactory.find(element) is None:
            print(f"no element {element}: apt-get install {package}", file=sys.stderr)
            return 1

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        f"( videotestsrc is-live=true pattern=ball ! video/x-raw,width={args.width},height={args.height},"
        f"framerate={args.fps}/1 ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={args.fps} "
        "! rtph264pay name=pay0 pt=96 config-interval=1 )")
    factory.set_shared(True)
    server.get_mount_points().add_factory("/test", factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr)
        return 1
    loop = GLib.MainLoop()
    signal.signal(signal.SIGTERM, lambda *_: loop.quit())
    GLib.timeout_add(100, lambda: True)  # wakes the loop so Python sees SIGTERM
    print("ready", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
