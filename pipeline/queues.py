"""Named bounded queues with an explicit full-queue policy.

``block``: the producer waits (offline files: backpressure reaches the decoder, nothing is lost).
``drop_oldest``: the newest item wins; the evicted item is counted via ``on_drop`` (live sources).
Control markers (end of stream, shutdown) are never dropped.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Generic, Literal, TypeVar

Policy = Literal["block", "drop_oldest"]
T = TypeVar("T")


class NamedQueue(Generic[T]):
    def __init__(self, name: str, maxsize: int, policy: Policy = "block",
                 on_drop: Callable[[object], None] | None = None,
                 is_control: Callable[[object], bool] | None = None,
                 listener: threading.Event | None = None) -> None:
        if maxsize < 1:
            raise ValueError(f"queue {name}: maxsize must be >= 1")
        self.name = name
        self.maxsize = maxsize
        self.policy = policy
        self._on_drop = on_drop
        self._is_control = is_control or (lambda item: False)
        self._items: collections.deque[T] = collections.deque()
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self.dropped = 0
        self._ndata = 0  # data items held; control markers do not count against the bound
        self._listener = listener

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T, timeout: float | None = None, policy: Policy | None = None) -> bool:
        """Put ``item``. Returns False only if ``block`` timed out. Control items always get in."""
        pol = policy or self.policy
        dropped: list[T] = []
        with self._not_full:
            control = self._is_control(item)
            if not control:
                if pol == "block":
                    deadline = None if timeout is None else time.monotonic() + timeout
                    while self._ndata >= self.maxsize:
                        remaining = None if deadline is None else deadline - time.monotonic()
                        if remaining is not None and remaining <= 0:
                            return False
                        self._not_full.wait(remaining)
                else:
                    while self._ndata >= self.maxsize:
                        victim = self._evict_oldest_data()
                        if victim is None:
                            break
                        dropped.append(victim)
                self._ndata += 1
            self._items.append(item)
            self._not_empty.notify()
        if self._listener is not None:
            self._listener.set()
        for victim in dropped:
            self.dropped += 1
            if self._on_drop is not None:
                self._on_drop(victim)
        return True

    def _evict_oldest_data(self) -> T | None:
        for i, it in enumerate(self._items):
            if not self._is_control(it):
                del self._items[i]
                self._ndata -= 1
                return it
        return None

    def get(self, timeout: float | None = None) -> T:
        """Remove and return the oldest item; raises ``TimeoutError`` after ``timeout`` seconds."""
        with self._not_empty:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._items:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(self.name)
                self._not_empty.wait(remaining)
            item = self._take()
            return item

    def _take(self) -> T:
        item = self._items.popleft()
        if not self._is_control(item):
            self._ndata -= 1
        self._not_full.notify()
        return item

    def get_nowait(self) -> T | None:
        with self._lock:
            if not self._items:
                return None
            return self._take()


class FanIn(Generic[T]):
    """Round-robin reader over several queues (one per source), so that one busy stream cannot starve others."""

    def __init__(self) -> None:
        self.queues: list[NamedQueue[T]] = []
        self.event = threading.Event()
        self._next = 0
        self._lock = threading.Lock()

    def add(self, q: NamedQueue[T]) -> None:
        with self._lock:
            self.queues.append(q)
        self.event.set()

    def remove(self, q: NamedQueue[T]) -> None:
        with self._lock:
            self.queues.remove(q)

    def __len__(self) -> int:
        return sum(len(q) for q in self.queues)

    def get_nowait(self) -> T | None:
        with self._lock:
            qs = list(self.queues)
        n = len(qs)
        for k in range(n):
            item = qs[(self._next + k) % n].get_nowait()
            if item is not None:
                self._next = (self._next + k + 1) % n
                return item
        return None

    def get(self, timeout: float | None = None) -> T:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.event.clear()
            item = self.get_nowait()
            if item is not None:
                return item
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError("fan-in")
            self.event.wait(0.1 if remaining is None else min(0.1, remaining))
