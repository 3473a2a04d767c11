"""Prometheus metrics. One :class:`Metrics` object owns its registry (no global state)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import MetricsHandler

from pipeline.redact import redact_data

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0)
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)

# Every metric the pipeline exports (without the ``dptstream_`` prefix); deploy/ checks against this list.
METRIC_NAMES = (
    "frames_total", "frames_dropped_total", "stage_seconds", "latency_seconds", "queue_depth",
    "batch_size", "stream_up", "stream_reconnects_total", "sink_errors_total", "build_info",
    "degraded", "sink_buffer_depth", "jobs_total", "rule_events_total", "rule_active", "nonfinite_outputs_total",
    "skipped_packets_total", "fleet_cameras", "fleet_handovers_total", "fleet_desired_cameras",
)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.frames = Counter("dptstream_frames", "Frames per stream and stage (decoded, inferred, published)",
                              ["stream", "stage"], registry=r)
        self.dropped = Counter("dptstream_frames_dropped", "Frames dropped, by stream and reason",
                               ["stream", "reason"], registry=r)
        self.stage_seconds = Histogram("dptstream_stage_seconds", "Time spent per item in each stage",
                                       ["stage"], buckets=STAGE_BUCKETS, registry=r)
        self.latency = Histogram("dptstream_latency_seconds", "Decode to publish latency per frame",
                                 ["stream"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("dptstream_queue_depth", "Items waiting in each named queue", ["queue"],
                                 registry=r)
        self.batch_size = Histogram("dptstream_batch_size", "Frames per inference batch",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.stream_up = Gauge("dptstream_stream_up", "1 while a source is delivering frames", ["stream"],
                               registry=r)
        self.reconnects = Counter("dptstream_stream_reconnects", "Source reconnects, by reason",
                                  ["stream", "reason"], registry=r)
        self.sink_errors = Counter("dptstream_sink_errors", "Failed sink writes (retried or dropped)",
                                   ["sink"], registry=r)
        self.nonfinite = Counter("dptstream_nonfinite_outputs", "Frames whose model output held NaN or Inf "
                                 "(published with null statistics), by stream and task", ["stream", "task"],
                                 registry=r)
        self.skipped_packets = Counter("dptstream_skipped_packets", "Video packets skipped because they could not "
                                       "be decoded (each may have held a frame), by stream", ["stream"], registry=r)
        self.build_info = Info("dptstream_build", "Version and engines in use", registry=r)
        self.degraded = Gauge("dptstream_degraded", "1 for the degradation level a stream is at",
                              ["stream", "level"], registry=r)
        self.sink_buffer = Gauge("dptstream_sink_buffer_depth", "Results held while the sink is away",
                                 ["sink"], registry=r)
        self.jobs = Counter("dptstream_jobs", "Batch jobs finished by this process, by state", ["state"],
                            registry=r)
        self.rule_events = Counter("dptstream_rule_events", "Rule transitions (zones), by stream, rule and state "
                                   "(start, end)", ["stream", "rule", "state"], registry=r)
        self.rule_active = Gauge("dptstream_rule_active", "1 while a zone rule is active on a stream",
                                 ["stream", "rule"], registry=r)
        self.fleet_cameras = Gauge("dptstream_fleet_cameras", "Cameras this fleet node runs", ["node"], registry=r)
        self.fleet_desired = Gauge("dptstream_fleet_desired_cameras", "Cameras in the fleet's registry (as this "
                                   "node last read it)", registry=r)
        self.handovers = Counter("dptstream_fleet_handovers", "Cameras this node took over from another, by why the "
                                 "other let go (node_lost, released, rebalance)", ["reason"], registry=r)
        self._queue_probes: dict[str, Callable[[], int]] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def watch_queue(self, name: str, size: Callable[[], int]) -> None:
        self.queue_depth.labels(queue=name).set_function(size)

    def serve(self, port: int, host: str = "0.0.0.0",
              health: Callable[[], tuple[bool, bool, dict[str, Any]]] | None = None) -> int:
        """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on ``port`` (0 = any free port). Returns the port."""
        import json

        registry = self.registry

        class Handler(MetricsHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path in ("/healthz", "/readyz"):
                    alive, ready, detail = health() if health else (True, True, {})
                    ok = alive if path == "/healthz" else ready
                    body = json.dumps(redact_data({"ok": ok, **detail})).encode()  # no password, whatever the detail
                    self.send_response(200 if ok else 503)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                super().do_GET()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        Handler.registry = registry
        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()
        return int(self._server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
