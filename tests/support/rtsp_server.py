"""A real RTSP server for the tests and the soak benchmark (GStreamer's gst-rtsp-server).

Two halves in one file:

* :class:`RtspServer` (imported by the tests, runs in the venv) writes a real-content clip's decoded
  frames to a raw file and starts/stops/restarts the server process on a fixed port.
* ``serve()`` (run as ``/usr/bin/python3 tests/support/rtsp_server.py ...``) is the server itself. It needs
  Debian's ``python3-gi``, ``gir1.2-gst-rtsp-server-1.0``, ``gstreamer1.0-rtsp`` and
  ``gstreamer1.0-plugins-{base,good,ugly}``, which exist for the system Python only.

Each mount plays the clip in a loop as a live camera would: frames are pushed at the clip's frame
rate and encoded on the fly with x264 (zero-latency tune, one-second GOP), payloaded as RTP H.264.
A mount spec ``NAME[:key=value,...]`` takes options: ``fps``, ``offset`` (first frame), ``freeze_after``
(seconds after which the picture freezes on one frame while frames keep flowing),
``stall_after`` (seconds after which no more frames are sent while the session stays open).
Every new client session starts its own encoder from the mount's first frame. ``--user`` and
``--password`` turn on HTTP basic authentication for every mount; ``--tls-cert`` and ``--tls-key`` serve
``rtsps://`` (RTSP over TLS, media interleaved in the TLS connection).

Only the standard library is imported at module level, so the system Python can run this file.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SYSTEM_PYTHON = "/usr/bin/python3"
HERE = Path(__file__).resolve()


# --------------------------------------------------------------------------------------------------
# server side (system python + gi)
# --------------------------------------------------------------------------------------------------
def _parse_mount(spec: str) -> tuple[str, dict[str, float]]:
    name, _, rest = spec.partition(":")
    opts: dict[str, float] = {}
    for kv in filter(None, rest.split(",")):
        k, _, v = kv.partition("=")
        opts[k] = float(v)
    return name, opts


def serve(argv: list[str] | None = None) -> None:
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    gi.require_version("GstRtsp", "1.0")
    from gi.repository import Gio, GLib, Gst, GstRtsp, GstRtspServer

    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--frames", required=True, help="raw RGB24 frames, concatenated")
    ap.add_argument("--width", type=int, required=True)
    ap.add_argument("--height", type=int, required=True)
    ap.add_argument("--fps", type=int, default=15)
    ap.add_argument("--mount", action="append", required=True)
    ap.add_argument("--user")
    ap.add_argument("--password")
    ap.add_argument("--tls-cert", help="PEM certificate: serve rtsps:// (TLS) instead of rtsp://")
    ap.add_argument("--tls-key")
    a = ap.parse_args(argv)

    Gst.init(None)
    size = a.width * a.height * 3
    data = Path(a.frames).read_bytes()
    frames = [Gst.Buffer.new_wrapped(data[i: i + size]) for i in range(0, len(data) - size + 1, size)]
    if not frames:
        sys.exit("no frames")

    def launch(fps: int) -> str:
        caps = f"video/x-raw,format=RGB,width={a.width},height={a.height},framerate={fps}/1"
        return (
            f"( appsrc name=src is-live=true do-timestamp=true format=time caps={caps} "
            "! videoconvert ! video/x-raw,format=I420 "
            f"! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} threads=1 bitrate=800 "
            "! video/x-h264,profile=baseline ! rtph264pay name=pay0 pt=96 config-interval=1 )"
        )

    loop = GLib.MainLoop()
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(a.port))
    mounts = server.get_mount_points()

    secured = bool(a.user or a.tls_cert)
    if secured:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "user")
        if a.user:
            auth.add_basic(GstRtspServer.RTSPAuth.make_basic(a.user, a.password or ""), token)
        else:
            auth.set_default_token(token)  # TLS without a password: everyone may watch
        if a.tls_cert:
            auth.set_tls_certificate(Gio.TlsCertificate.new_from_files(a.tls_cert, a.tls_key))
        server.set_auth(auth)

    def configure(factory: Any, media: Any, opts: dict[str, float]) -> None:
        src = media.get_element().get_child_by_name("src")
        state = {"i": 0, "t0": time.monotonic(), "alive": True}
        offset = int(opts.get("offset", 0))
        fps = int(opts.get("fps", a.fps))

        def push() -> bool:
            if not state["alive"]:
                return False
            elapsed = time.monotonic() - state["t0"]
            if "stall_after" in opts and elapsed >= opts["stall_after"]:
                return True  # keep the session, send nothing
            i = state["i"]
            if "freeze_after" in opts and elapsed >= opts["freeze_after"]:
                i = state.setdefault("frozen_at", i)
            else:
                state["i"] = i + 1
            buf = frames[(offset + i) % len(frames)].copy()
            buf.duration = Gst.SECOND // fps
            ret = src.emit("push-buffer", buf)
            if ret != Gst.FlowReturn.OK:
                state["alive"] = False
                return False
            return True

        def gone(*_: Any) -> None:
            state["alive"] = False

        media.connect("unprepared", gone)
        GLib.timeout_add(max(1, 1000 // fps), push)

    for spec in a.mount:
        name, opts = _parse_mount(spec)
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(launch(int(opts.get("fps", a.fps))))
        factory.set_shared(False)
        factory.set_eos_shutdown(False)
        if a.tls_cert:
            factory.set_protocols(GstRtsp.RTSPLowerTrans.TCP)  # media inside the TLS connection
        if secured:
            perms = Gst.Structure.new_empty("user")
            perms.set_value(GstRtspServer.RTSP_PERM_MEDIA_FACTORY_ACCESS, True)
            perms.set_value(GstRtspServer.RTSP_PERM_MEDIA_FACTORY_CONSTRUCT, True)
            factory.add_role_from_structure(perms)
        factory.connect("media-configure", configure, opts)
        mounts.add_factory("/" + name, factory)

    if server.attach(None) == 0:
        sys.exit(f"cannot bind RTSP port {a.port}")

    def quit_(*_: Any) -> None:
        loop.quit()

    signal.signal(signal.SIGTERM, quit_)
    signal.signal(signal.SIGINT, quit_)
    # wake the main loop now and then so that Python signal handlers run
    GLib.timeout_add(200, lambda: True)
    print("ready", flush=True)
    loop.run()


# --------------------------------------------------------------------------------------------------
# client side (the venv: tests and benchmarks)
# --------------------------------------------------------------------------------------------------
def rtsp_available() -> str | None:
    """None when the server can run here, else why not (for ``pytest.skip``)."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} not found"
    probe = ("import gi; gi.require_version('Gst','1.0'); gi.require_version('GstRtspServer','1.0');"
             "from gi.repository import Gst, GstRtspServer; Gst.init(None);"
             "import sys; sys.exit(0 if Gst.ElementFactory.find('x264enc') and "
             "Gst.ElementFactory.find('rtph264pay') else 3)")
    r = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        return ("GStreamer RTSP server not usable (apt-get install python3-gi gir1.2-gst-rtsp-server-1.0 "
                "gstreamer1.0-rtsp gstreamer1.0-plugins-base gstreamer1.0-plugins-good "
                f"gstreamer1.0-plugins-ugly): {(r.stderr or '').strip().splitlines()[-1:]}")
    return None


def write_raw_frames(clip: str | os.PathLike[str], out: str | os.PathLike[str],
                     width: int, height: int, limit: int = 10_000) -> Path:
    """Decode ``clip`` (a real H.264 file) to raw RGB24 frames of ``width`` x ``height`` for the server."""
    import av

    out = Path(out)
    n = 0
    with av.open(str(clip)) as c, open(out, "wb") as f:
        for frame in c.decode(video=0):
            f.write(frame.to_ndarray(format="rgb24", width=width, height=height).tobytes())
            n += 1
            if n >= limit:
                break
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RtspServer:
    """A gst-rtsp-server subprocess on 127.0.0.1. ``stop()`` then ``start()`` restarts it on the same port."""

    def __init__(self, frames: str | os.PathLike[str], width: int, height: int, mounts: list[str],
                 fps: int = 15, port: int | None = None, user: str | None = None,
                 password: str | None = None, log: str | os.PathLike[str] | None = None,
                 tls_cert: str | os.PathLike[str] | None = None, tls_key: str | os.PathLike[str] | None = None
                 ) -> None:
        self.frames = Path(frames)
        self.width, self.height, self.fps = width, height, fps
        self.mounts = mounts
        self.port = port or _free_port()
        self.user, self.password = user, password
        self.log = Path(log) if log else None
        self.tls = (str(tls_cert), str(tls_key)) if tls_cert else None
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, mount: str, user: str | None = None, password: str | None = None) -> str:
        cred = f"{user}:{password}@" if user is not None else ""
        return f"{'rtsps' if self.tls else 'rtsp'}://{cred}127.0.0.1:{self.port}/{mount}"

    def start(self, timeout: float = 20.0) -> None:
        py = SYSTEM_PYTHON if Path(SYSTEM_PYTHON).exists() else shutil.which("python3") or sys.executable
        cmd = [py, str(HERE), "--port", str(self.port), "--frames", str(self.frames), "--width",
               str(self.width), "--height", str(self.height), "--fps", str(self.fps)]
        for m in self.mounts:
            cmd += ["--mount", m]
        if self.user:
            cmd += ["--user", self.user, "--password", self.password or ""]
        if self.tls:
            cmd += ["--tls-cert", self.tls[0], "--tls-key", self.tls[1]]
        err = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env)
        if err is not subprocess.DEVNULL:
            err.close()
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # "ready" once the port is bound
        if b"ready" not in line:
            self.stop()
            raise RuntimeError(f"RTSP server did not start on port {self.port}")
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"RTSP server not reachable on port {self.port}")

    def stop(self) -> None:
        """Kill the server abruptly (as a crashing camera would): clients see the connection drop."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None

    def restart(self, down_s: float = 0.0) -> None:
        self.stop()
        if down_s:
            time.sleep(down_s)
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> RtspServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    serve()
