"""Zone outlines in the overlay pictures (pipeline/overlay.py): drawn where the polygon is, red while active."""

from __future__ import annotations

import numpy as np

from pipeline.frames import FrameId, Result
from pipeline.overlay import ACTIVE_COLOUR, ZONE_COLOUR, compose, draw_zones

SQUARE = [[0.25, 0.25], [0.75, 0.25], [0.75, 0.75], [0.25, 0.75]]


def near(picture: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    return np.abs(picture.astype(int) - np.array(colour)).sum(-1) < 30  # type: ignore[no-any-return]


def test_zone_outline_is_drawn_on_the_polygon_and_red_when_active() -> None:
    panel = np.zeros((200, 320, 3), np.uint8)
    idle = draw_zones(panel, [("door", SQUARE, False)])
    active = draw_zones(panel, [("door", SQUARE, True)])
    assert near(idle, ZONE_COLOUR)[100, 78:83].any()  # the left edge, x = 0.25 * 320
    assert near(active, ACTIVE_COLOUR)[100, 78:83].any() and not near(active, ZONE_COLOUR).any()
    assert not near(idle, ZONE_COLOUR)[100, 100:220].any()  # the inside is left alone
    assert (draw_zones(panel, []) == panel).all()


def test_compose_outlines_zones_on_every_half() -> None:
    fid = FrameId("cam", 0, 0.0, 0.0, 320, 200)
    mask = np.zeros((50, 80), np.uint8)
    r = Result(fid, mask, {0: 1.0}, {"kind": "relative_inverse"}, np.random.rand(50, 80).astype(np.float32),
               np.zeros((200, 320, 3), np.uint8), active_zones=frozenset({"door"}))
    out = compose(r, {0: "wall"}, True, True, (320, 200), [("door", SQUARE, True)])
    assert out.shape == (200, 640, 3)
    red = near(out, ACTIVE_COLOUR)
    assert red[100, 78:83].any() and red[100, 320 + 78:320 + 83].any()
