"""Rendezvous assignment: balanced within capacity, deterministic, and moving only the cameras it must."""

from __future__ import annotations

from collections import Counter

from pipeline.fleet.hrw import assign, ranked, weight

CAMS = [f"cam{i}" for i in range(12)]


def loads(a: dict[str, str]) -> Counter[str]:
    return Counter(a.values())


def test_same_inputs_same_assignment_on_every_node() -> None:
    nodes = {"a": 8, "b": 8, "c": 8}
    assert assign(CAMS, nodes, {}) == assign(list(reversed(CAMS)), dict(reversed(nodes.items())), {})
    assert weight("a", "cam1") == weight("a", "cam1") != weight("b", "cam1")
    assert ranked("cam1", ["a", "b", "c"])[0] == max(["a", "b", "c"], key=lambda n: weight(n, "cam1"))


def test_balanced_within_one_of_the_fair_share() -> None:
    for n_cams in (1, 5, 6, 7, 12):
        a = assign(CAMS[:n_cams], {"a": 16, "b": 16, "c": 16}, {})
        assert len(a) == n_cams
        assert max(loads(a).values()) - min(loads(a).values(), default=0) <= 1 or n_cams < 3


def test_capacity_is_never_exceeded_and_uneven_capacities_are_filled() -> None:
    a = assign(CAMS[:6], {"small": 1, "big": 10}, {})
    assert loads(a) == {"small": 1, "big": 5}
    a = assign(CAMS, {"a": 2, "b": 3}, {})
    assert len(a) == 5 and loads(a) == {"a": 2, "b": 3}


def test_a_node_leaving_moves_only_its_cameras() -> None:
    before = assign(CAMS[:6], {"a": 8, "b": 8, "c": 8}, {})
    after = assign(CAMS[:6], {"a": 8, "b": 8}, before)
    moved = {c for c in before if before[c] != after[c]}
    assert moved == {c for c, n in before.items() if n == "c"}


def test_a_node_joining_takes_only_its_fair_share() -> None:
    two = assign(CAMS[:6], {"a": 8, "b": 8}, {})
    three = assign(CAMS[:6], {"a": 8, "b": 8, "c": 8}, two)
    moved = {c for c in two if two[c] != three[c]}
    assert len(moved) == 2 and all(three[c] == "c" for c in moved)


def test_a_new_camera_moves_nothing_else() -> None:
    six = assign(CAMS[:6], {"a": 8, "b": 8, "c": 8}, {})
    seven = assign(CAMS[:7], {"a": 8, "b": 8, "c": 8}, six)
    assert all(seven[c] == six[c] for c in six)


def test_no_nodes_or_dead_owners() -> None:
    assert assign(CAMS, {}, {}) == {}
    a = assign(CAMS[:2], {"a": 8}, {"cam0": "gone"})
    assert a == {"cam0": "a", "cam1": "a"}
