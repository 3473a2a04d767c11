"""Rendezvous (highest-random-weight) assignment of cameras to nodes, with bounded loads and sticky owners.

Every node computes the same assignment from the same inputs (desired cameras, live nodes with their capacity,
current owners), so no coordinator is needed: a node acquires the cameras assigned to it and lets go of the
others. A node's load is bounded by its fair share (``ceil(cameras / nodes)``, never over its capacity); a
camera stays with its current owner while that owner is within its bound, so a node joining or leaving moves
only the cameras it must.

>>> assign(["a", "b"], {"n1": 8}, {})
{'a': 'n1', 'b': 'n1'}
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping


def weight(node: str, camera: str) -> int:
    """The pseudo-random weight of ``camera`` on ``node`` (the same on every machine and Python run)."""
    digest = hashlib.blake2b(f"{node}\x00{camera}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def ranked(camera: str, nodes: Iterable[str]) -> list[str]:
    """``nodes`` in the order ``camera`` prefers them (highest weight first)."""
    return sorted(nodes, key=lambda n: (weight(n, camera), n), reverse=True)


def assign(cameras: Iterable[str], capacity: Mapping[str, int], owners: Mapping[str, str]) -> dict[str, str]:
    """Camera -> node for every camera that fits (a camera is left out only when every node is full).

    ``capacity``: the live nodes and how many cameras each takes at most; ``owners``: camera -> the node that
    holds it now (owners that are not live are ignored)."""
    cams = sorted(set(cameras))
    nodes = sorted(n for n, c in capacity.items() if c > 0)
    if not cams or not nodes:
        return {}
    fair = math.ceil(len(cams) / len(nodes))
    bound = {n: min(capacity[n], fair) for n in nodes}
    load = dict.fromkeys(nodes, 0)
    out: dict[str, str] = {}

    def take(pairs: list[tuple[int, str, str]], limit: Mapping[str, int]) -> None:
        for _, cam, node in sorted(pairs, reverse=True):
            if cam not in out and load[node] < limit[node]:
                out[cam] = node
                load[node] += 1

    # incumbents first (their strongest cameras), then rendezvous order, then any room left (uneven capacities)
    take([(weight(owners[c], c), c, owners[c]) for c in cams if owners.get(c) in bound], bound)
    take([(weight(n, c), c, n) for c in cams for n in nodes], bound)
    if len(out) < len(cams):
        take([(weight(n, c), c, n) for c in cams if c not in out for n in nodes], capacity)
    return out
