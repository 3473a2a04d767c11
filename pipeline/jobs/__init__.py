"""Batch jobs over a Redis Streams consumer group: ``keys`` (key names, states), ``submit`` (expand inputs,
queue jobs), ``status`` (read job and worker state), ``worker`` (claim, run, heartbeat, finish)."""

from __future__ import annotations
