"""The lease scripts against a real redis-server: one owner, tokens that only grow, renew/release only by the
owner, and the sink's publish script refusing a stale token."""

from __future__ import annotations

import time

from pipeline.fleet.keys import FleetKeys
from pipeline.fleet.leases import Leases
from tests.support.servers import RedisServer


def test_one_owner_tokens_grow_and_only_the_owner_renews(redis_server: RedisServer) -> None:
    c = redis_server.client()
    keys = FleetKeys("t")
    a, b = Leases(c, keys, "node-a", 0.3), Leases(c, keys, "node-b", 0.3)
    g = a.acquire("cam")
    assert g.ok and g.token == 1 and g.reason == "new"
    held = b.acquire("cam")
    assert not held.ok and held.reason == "node-a"
    assert a.acquire("cam").reason == "held"
    assert a.renew("cam", 1) and not b.renew("cam", 1)
    assert not b.release("cam", 1)
    time.sleep(0.45)  # a's lease expires: b takes over with a newer token, noting the owner was lost
    g2 = b.acquire("cam")
    assert g2.ok and g2.token == 2 and g2.reason == "node_lost"
    assert not a.renew("cam", 1)  # a wakes up: the camera is not its any more
    assert b.release("cam", 2, "rebalance")
    g3 = a.acquire("cam")
    assert g3.token == 3 and g3.reason == "rebalance"
    assert a.owners(["cam", "other"]) == {"cam": ("node-a", 3)}


def test_renew_takes_back_an_expired_lease_nobody_took(redis_server: RedisServer) -> None:
    c = redis_server.client()
    a = Leases(c, FleetKeys("t"), "node-a", 0.2)
    tok = a.acquire("cam").token
    time.sleep(0.3)
    assert a.owners(["cam"]) == {}
    assert a.renew("cam", tok)  # e.g. across a Redis outage: same token, still the only writer
    assert a.owners(["cam"]) == {"cam": ("node-a", tok)}
    c.delete(FleetKeys("t").fence)  # a Redis that lost its data: the old token is not trusted
    c.delete(FleetKeys("t").lease("cam"))
    assert not a.renew("cam", tok)


def test_the_publish_script_refuses_a_stale_token_and_counts_it(redis_server: RedisServer) -> None:
    """A node's sink writes with the camera's token; once another node acquired the camera (a newer token) every
    frame it still sends is refused before anything is written, and counted as a fenced drop."""
    from pipeline.config import PipelineConfig
    from pipeline.frames import FrameId, Result
    from pipeline.metrics import Metrics
    from pipeline.sinks import RedisSink

    c = redis_server.client()
    keys = FleetKeys("dpt")
    metrics = Metrics()
    sink = RedisSink(redis_server.url, PipelineConfig.model_validate({"sinks": [redis_server.url]}), metrics)
    sink.open()
    try:
        a = Leases(c, keys, "node-a", 5.0)
        tok = a.acquire("cam").token
        sink.fence("cam", tok, "node-a")
        sink.write([Result(FrameId("cam", 0, 0.0, 1.0, 8, 8), None)])
        (_, f), = c.xrange("dpt:stream:cam:frames")
        assert f[b"node"] == b"node-a" and int(f[b"fence"]) == tok
        c.delete(keys.lease("cam"))
        assert Leases(c, keys, "node-b", 5.0).acquire("cam").token == tok + 1  # the camera moved
        sink.write([Result(FrameId("cam", i, i / 10, 1.0 + i, 8, 8), None) for i in (1, 2)])
        assert c.xlen("dpt:stream:cam:frames") == 1 and c.hget("dpt:stream:cam:progress", "frame") == b"0"
        assert metrics.dropped.labels(stream="cam", reason="fenced")._value.get() == 2
        assert sink.published == 1
        sink.fence("other", 7, "node-a")  # a token Redis never handed out is refused too
        sink.write([Result(FrameId("other", 0, 0.0, 1.0, 8, 8), None)])
        assert c.xlen("dpt:stream:other:frames") == 0
    finally:
        sink.close()
