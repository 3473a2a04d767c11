"""``dptstream node``: one pipeline whose sources follow this node's share of the fleet's cameras.

The engines load once. A reconcile loop (woken by the registry's change notification, else every
``min(fleet.reconcile_s, fleet.lease_s / 3)``) renews the leases it holds, heartbeats, reads the registry, the live
nodes and the current owners, computes the rendezvous assignment (:func:`~pipeline.fleet.hrw.assign`), lets go of
the cameras assigned elsewhere and acquires the ones assigned to it, adding and removing sources on the running
pipeline. A lease that cannot be renewed because another node holds the camera now stops that camera at once;
while Redis is unreachable the node keeps running what it holds (results wait in the sink's buffer) and
reconciles when Redis is back. A registry key that disappears is not "remove everything": cameras keep running
(one warning); only ``cameras remove`` stops one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engines.base import error_reason
from pipeline.config import ConfigError, PipelineConfig, SourceConfig
from pipeline.fleet.hrw import assign
from pipeline.fleet.keys import FleetKeys
from pipeline.fleet.leases import Leases
from pipeline.fleet.nodes import NodeRegistry, live_nodes, read_nodes
from pipeline.fleet.registry import CameraRegistry, expand
from pipeline.redact import redact
from pipeline.sinks import RedisKeys, RedisSink, SinkError, redis_client, redis_down

log = logging.getLogger(__name__)

REDIS_DOWN = redis_down()
HANDOVER_REASONS = ("node_lost", "released", "rebalance")


def default_node_id() -> str:
    host = "".join(c if c.isalnum() or c in "._-" else "-" for c in socket.gethostname())[:40] or "node"
    return f"{host}-{os.getpid()}"


@dataclass
class Held:
    token: int
    entry: dict[str, Any]  # the registry entry it runs (a replaced entry restarts the camera)
    running: bool = False  # its source is part of the pipeline
    leaving: str = ""  # why it is being let go: released once what it decoded has drained


def fleet_redis_url(cfg: PipelineConfig) -> str:
    for s in cfg.sinks:
        if s.split(":", 1)[0].lower() in ("redis", "rediss"):
            return s
    raise ConfigError("a fleet node needs a Redis sink: pass --sink redis://HOST:PORT/DB (or set REDIS_URL)")


def check_models(client: Any, keys: FleetKeys, cfg: PipelineConfig, node_id: str) -> None:
    """Refuse to join a fleet whose live nodes run other checkpoints (``{prefix}:meta`` models, and each live
    node's own): a camera would give different results depending on where it runs."""
    mine = {t: cfg.models[t] for t in cfg.tasks}
    others = [n for n in live_nodes(read_nodes(client, keys), cfg.fleet.lease_s) if n.id != node_id]
    if not others:
        return  # no fleet to differ from: this node's models become the fleet's
    raw = client.hget(RedisKeys(keys.prefix).meta, "models")
    try:
        meta = {str(k): str(v) for k, v in json.loads(raw).items()} if raw else {}
    except (ValueError, AttributeError):
        meta = {}
    for theirs, where in [(meta, f"{keys.prefix}:meta models"), *((n.models, f"node {n.id}") for n in others)]:
        if theirs and theirs != mine:
            shown = ", ".join(f"{t}={m}" for t, m in sorted(theirs.items()))
            raise ConfigError(f"this node's checkpoints differ from the fleet's ({where}: {shown}): run every node "
                              "with the same models, or use another --redis-prefix")


class FleetNode:
    """Runs the cameras this node owns in ``pipeline`` (a running :class:`~pipeline.runtime.Pipeline` with
    ``hold_open``). ``plan`` plans one source (``plan_source`` bound to the config, engines and progress store)."""

    def __init__(self, cfg: PipelineConfig, node_id: str, pipeline: Any, sink: RedisSink, metrics: Any,
                 plan: Callable[[SourceConfig], Any]) -> None:
        self.cfg = cfg
        self.node_id = node_id
        self.pipeline = pipeline
        self.sink = sink
        self.metrics = metrics
        self.plan = plan
        self.keys = FleetKeys(cfg.redis.prefix)
        url = fleet_redis_url(cfg)
        rc = cfg.redis
        self.client = redis_client(url, rc.ca_file, timeout=max(min(cfg.fleet.lease_s / 3, 2.0), 0.2),
                                   cert_file=rc.cert_file, key_file=rc.key_file)
        self._url = url
        self.leases = Leases(self.client, self.keys, node_id, cfg.fleet.lease_s)
        self.nodes = NodeRegistry(self.client, self.keys, node_id, cfg.fleet.max_cameras,
                                  {t: cfg.models[t] for t in cfg.tasks}, socket.gethostname())
        self.registry = CameraRegistry(self.client, self.keys)
        self.held: dict[str, Held] = {}
        self.period = min(cfg.fleet.reconcile_s, cfg.fleet.lease_s / 3)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._listener: threading.Thread | None = None
        self._down = False
        self._registry_gone = False
        self._unrunnable: dict[str, str] = {}  # camera -> why this node cannot run it (warned once)
        self._start_errors: dict[str, str] = {}  # camera -> why its last start failed (warned once)
        self._gauge = metrics.fleet_cameras.labels(node=node_id)

    # -- lifecycle ----------------------------------------------------------------------------------------
    def start(self) -> None:
        self.nodes.heartbeat([])
        self._thread = threading.Thread(target=self._loop, name="fleet-reconcile", daemon=True)
        self._thread.start()
        self._listener = threading.Thread(target=self._listen, name="fleet-notify", daemon=True)
        self._listener.start()
        log.info("fleet node %s: up to %d cameras, lease %.1fs", self.node_id, self.cfg.fleet.max_cameras,
                 self.cfg.fleet.lease_s)

    def request_stop(self) -> None:
        """SIGTERM: let go of every camera at once (other nodes take them over within a connect time), then the
        pipeline drains what it decoded (those results are refused by their stale tokens once moved)."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._wake.set()
        with self._lock:
            for cam, h in list(self.held.items()):
                self._stop_camera(cam)  # a handover: the next owner continues its rules
                try:
                    self.leases.release(cam, h.token, "released")
                except REDIS_DOWN as e:
                    log.debug("%s: release failed (%s); the lease expires", cam, error_reason(e))
            if self.held:
                self._announce()
            self.held.clear()
            self._gauge.set(0)
        with contextlib.suppress(*REDIS_DOWN):
            self.nodes.leave()
        self.pipeline.request_stop()

    def abort_now(self) -> None:
        self.request_stop()
        self.pipeline.abort_now()

    def unwritten(self) -> int:
        return int(self.pipeline.unwritten())

    def join(self, timeout: float = 5.0) -> None:
        for t in (self._thread, self._listener):
            if t is not None:
                t.join(timeout)

    def health(self) -> tuple[bool, bool, dict[str, Any]]:
        alive, ready, detail = self.pipeline.health()
        with self._lock:
            cams = sorted(self.held)
        return alive, ready and not self._down, {**detail, "node": self.node_id, "cameras": cams}

    # -- the reconcile loop ---------------------------------------------------------------------------------
    def _listen(self) -> None:
        """Wake the reconcile loop on every registry change (a fresh subscription after each outage)."""
        while not self._stopping.is_set():
            ps = None
            try:
                ps = self.client.pubsub(ignore_subscribe_messages=True)
                ps.subscribe(self.keys.changed)
                while not self._stopping.is_set():
                    if ps.get_message(timeout=0.5) is not None:
                        self._wake.set()
            except Exception as e:  # the periodic reconcile covers the gap
                log.debug("fleet notifications: %s", error_reason(e))
                self._stopping.wait(self.period)
            finally:
                if ps is not None:
                    with contextlib.suppress(Exception):
                        ps.close()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self.reconcile()
                if self._down:
                    log.warning("fleet node %s: Redis is back; reconciling", self.node_id)
                    self._down = False
            except REDIS_DOWN as e:
                if not self._down:
                    self._down = True
                    log.warning("fleet node %s: Redis unreachable (%s); keeping the %d camera(s) it holds",
                                self.node_id, error_reason(e), len(self.held))
            except Exception:
                log.exception("fleet node %s: reconcile failed", self.node_id)
            self._wake.wait(self.period)
            self._wake.clear()

    def reconcile(self) -> None:
        with self._lock:
            if self._stopping.is_set():
                return
            self._renew()
            self.nodes.heartbeat(list(self.held))
            entries = self.registry.entries()
            if entries is None:
                if not self._registry_gone and self.held:
                    log.warning("fleet: the registry %s is gone (a flushed or restarted Redis?); keeping the %d "
                                "camera(s) this node runs; only `dptstream cameras remove` stops a camera",
                                self.keys.cameras, len(self.held))
                self._registry_gone = True
                self._start_pending()
                return
            self._registry_gone = False
            self.metrics.fleet_desired.set(len(entries))
            for cam in [c for c, h in self.held.items() if c not in entries and not h.leaving]:
                log.info("%s: removed from the registry; stopping it", cam)
                self._let_go(cam, "removed")
            for cam, h in list(self.held.items()):
                if cam in entries and not h.leaving and h.entry != entries[cam]:
                    log.info("%s: its registry entry changed; restarting it", cam)
                    self._stop_camera(cam)
                    h.entry = entries[cam]
            infos = read_nodes(self.client, self.keys)
            self.nodes.forget_stale(infos)
            capacity = {n.id: n.capacity for n in live_nodes(infos, self.cfg.fleet.lease_s)}
            capacity[self.node_id] = self.cfg.fleet.max_cameras
            runnable = [c for c in entries if self._runnable(c, entries[c])]
            owners = {c: o[0] for c, o in self.leases.owners(runnable).items()}
            target = assign(runnable, capacity, owners)
            for cam in [c for c, h in self.held.items() if target.get(c) != self.node_id and not h.leaving]:
                log.info("%s: handing over to %s (rebalance)", cam, target.get(cam, "no node"))
                self._let_go(cam, "rebalance")
            self._release_drained()
            for cam in sorted(c for c, n in target.items() if n == self.node_id and c not in self.held):
                grant = self.leases.acquire(cam)
                if not grant.ok:
                    continue  # its owner still holds it: it lets go on its own reconcile
                if grant.reason in HANDOVER_REASONS:
                    self.metrics.handovers.labels(reason=grant.reason).inc()
                self.held[cam] = Held(grant.token, entries[cam])
                log.info("%s: acquired (token %d%s)", cam, grant.token,
                         "" if grant.reason in ("new", "held") else f", previous owner {grant.reason}")
            self._start_pending()
            self._gauge.set(len(self.held))

    def _runnable(self, cam: str, entry: dict[str, Any]) -> bool:
        """Whether this node can run ``entry`` (its ``${VAR}``s are set here); said once per camera."""
        try:
            expand(entry)
        except ConfigError as e:
            if self._unrunnable.get(cam) != str(e):
                self._unrunnable[cam] = str(e)
                log.warning("%s: this node cannot run it (%s)", cam, e)
            return False
        self._unrunnable.pop(cam, None)
        return True

    def _renew(self) -> None:
        for cam, h in list(self.held.items()):
            if not self.leases.renew(cam, h.token):
                log.warning("%s: lease lost (another node holds it now); stopping it at once", cam)
                self._stop_camera(cam)
                del self.held[cam]

    def _let_go(self, cam: str, reason: str) -> None:
        """Stop reading ``cam``; its lease is released once what it decoded is written (:meth:`_release_drained`),
        so the next owner starts after the last frame of this one and nothing is refused on the way."""
        self._stop_camera(cam, handover=reason != "removed")
        self.held[cam].leaving = reason
        self._release_drained()

    def _release_drained(self) -> None:
        released = False
        for cam, h in list(self.held.items()):
            if h.leaving and not self._draining(cam):
                self.leases.release(cam, h.token, h.leaving)
                del self.held[cam]
                released = True
        if released:
            self._announce()

    def _announce(self) -> None:
        """Wake the other nodes now (a released camera is taken over on their next reconcile, not a period later)."""
        with contextlib.suppress(*REDIS_DOWN):
            self.client.publish(self.keys.changed, "released")

    def _stop_camera(self, cam: str, handover: bool = True) -> None:
        """Stop reading ``cam``. Unless it leaves the fleet (``handover`` False), it continues on another node:
        its end leaves its zone rules' state to the next owner instead of ending them."""
        h = self.held.get(cam)
        if h is not None and h.running:
            h.running = False
            try:
                self.pipeline.remove_source(cam, handover=handover)
            except Exception as e:  # it ended on its own meanwhile
                log.debug("%s: %s", cam, e)

    def _draining(self, cam: str) -> bool:
        """A previous reading of ``cam`` still has results on their way to the sinks (they carry the old token:
        a new one is handed to the sink only once they are through)."""
        rep = self.pipeline.report.streams.get(cam)
        return rep is not None and not rep.done

    def _start_pending(self) -> None:
        for cam, h in self.held.items():
            if h.running or h.leaving or self._draining(cam):
                continue
            try:
                src = expand(h.entry)
                self.sink.fence(cam, h.token, self.node_id)
                self.pipeline.add_source(self.plan(src))
                h.running = True
                self._start_errors.pop(cam, None)
            except REDIS_DOWN:
                raise
            except Exception as e:  # retried on every reconcile, said once per reason
                why = str(e) if isinstance(e, ConfigError | SinkError) else error_reason(e)
                if self._start_errors.get(cam) != why:
                    self._start_errors[cam] = why
                    log.warning("%s: cannot start it (%s); retrying", cam, why)


@dataclass
class NodeRun:
    """A started node: its runtime (engines, sinks, metrics server), pipeline and reconcile loop."""

    node: FleetNode
    runtime: Any
    pipeline: Any

    def wait(self) -> Any:
        try:
            return self.pipeline.wait()
        finally:
            self.node.request_stop()
            self.node.join()

    def close(self) -> None:
        self.runtime.close()


def start_node(cfg: PipelineConfig) -> NodeRun:
    """Check the fleet, load the engines once, register and start reconciling. A :class:`ConfigError` (exit 2)
    for a config a node cannot run, or a fleet whose checkpoints differ."""
    from pipeline.runtime import Pipeline
    from pipeline.runtime.app import start_runtime
    from pipeline.runtime.plan import RunPlan, SourcePlan, plan_source

    if cfg.sources:
        raise ConfigError("a fleet node takes its cameras from the registry, not from sources: remove sources: "
                          "from the config (add them with `dptstream cameras import CONFIG`)")
    node_id = cfg.fleet.node_id or default_node_id()
    url = fleet_redis_url(cfg)
    probe = redis_client(url, cfg.redis.ca_file, timeout=5.0, cert_file=cfg.redis.cert_file,
                         key_file=cfg.redis.key_file)
    try:
        check_models(probe, FleetKeys(cfg.redis.prefix), cfg, node_id)
    except REDIS_DOWN as e:
        raise SinkError(f"cannot reach Redis at {redact(url)} ({error_reason(e)}); is redis-server running?") from e
    finally:
        probe.close()
    holder: dict[str, FleetNode] = {}

    def health() -> tuple[bool, bool, dict[str, Any]]:
        n = holder.get("node")
        return (True, False, {"state": "starting"}) if n is None else n.health()

    rt = start_runtime(cfg, health=health)
    try:
        sink = next(s for s in rt.sinks if isinstance(s, RedisSink))
        pipeline = Pipeline(cfg, rt.engines, rt.sinks, rt.metrics, plan=RunPlan(rt.zones, ()), hold_open=True)
        pipeline.build()
        store = rt.store

        def plan(src: SourceConfig) -> Any:
            if not src.is_live or store is None:
                return plan_source(cfg, src, rt.engines, store, record=True)
            # a camera moving between nodes continues its stream: frame numbers after the last published one,
            # and the rules' debounce state saved with it (a new camera starts at frame 0)
            saved = store.saved_progress(src.id)
            start = saved.last_frame + 1
            return SourcePlan(src, None, start, saved.rule_state if start else None)

        node = FleetNode(cfg, node_id, pipeline, sink, rt.metrics, plan)
        pipeline.start()
        node.start()
        holder["node"] = node
    except BaseException:
        rt.close()
        raise
    if rt.port is not None:
        log.info("fleet node %s: metrics and /readyz on http://%s:%d", node_id, cfg.metrics.host, rt.port)
    return NodeRun(node, rt, pipeline)
