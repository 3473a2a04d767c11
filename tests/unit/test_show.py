"""pipeline/cli/show.py: an entry's zones in brief (top class by coverage, nearest depth with units)."""

from __future__ import annotations

from pipeline.cli.show import zone_summary

LABELS = {"0": "wall", "12": "person"}


def test_metric_zones_name_the_top_class_and_the_nearest_metres() -> None:
    zones = {"door": {"coverage": {"0": 0.6, "12": 0.31}, "depth": {"median": 2.5, "nearest": 1.234}},
             "bay": {"coverage": {"7": 0.9}, "depth": {"median": 4.0, "nearest": 3.0}}}
    assert zone_summary(zones, LABELS, "metric") == "zones: door wall 60% nearest 1.23 m; bay 7 90% nearest 3.00 m"


def test_relative_depth_says_so_and_missing_parts_are_left_out() -> None:
    zones = {"door": {"coverage": {"12": 0.5, "0": 0.5}, "depth": {"median": 0.2, "nearest": 0.8125}},
             "empty": {"coverage": {}},
             "depth-only": {"depth": {"median": 1.0, "nearest": 2.0}}}
    assert zone_summary(zones, LABELS, "relative_inverse") == (
        "zones: door wall 50% nearest 0.812 relative inverse (larger = nearer); empty no classes; "
        "depth-only nearest 2 relative inverse (larger = nearer)")
    assert zone_summary({}, LABELS, None) == "zones: none"
