"""Failed API-key attempts per client address (the HTTP API's answer to key guessing).

After ``limit`` wrong keys from one client address within ``window_s`` seconds, that address
gets 429 with ``Retry-After`` for every request that needs a key, the right key included,
until the oldest of those failures is ``window_s`` old. Only a key that was presented and is
wrong counts (a request without one is a 401 that guesses nothing). The table is an LRU of at
most ``max_clients`` addresses, each with at most ``limit`` timestamps: its memory is bounded
whatever the number of addresses an attacker uses (the least recently failing ones are
forgotten first). Per ingress replica, like the per-key rate limit.

The address is the TCP peer the ingress sees: the client's own address behind Serve's proxy
(``ingress="proxy"``), but HAProxy's (one address for every client) with ``ingress="haproxy"``,
where a client that sends ``limit`` wrong keys locks every client out for up to ``window_s``
(see ``docs/security.md``).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable


class FailedKeys:
    """The sliding window of failed key attempts of each client address (thread-safe)."""

    def __init__(self, limit: int, window_s: float, max_clients: int,
                 clock: Callable[[], float] = time.monotonic):
        self.limit, self.window_s, self.max_clients, self._clock = limit, window_s, max_clients, clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, address: str) -> int:
        """Whole seconds until ``address`` may present a key again; 0 when it may now."""
        with self._lock:
            times = self._failures.get(address)
            if times is None or len(times) < self.limit:
                return 0
            wait = times[0] + self.window_s - self._clock()
            if wait <= 0:
                return 0
            return max(1, math.ceil(wait))

    def failed(self, address: str) -> None:
        """Record a wrong key presented by ``address`` now."""
        now = self._clock()
        with self._lock:
            times = self._failures.pop(address, None)
            if times is None:
                times = deque(maxlen=self.limit)
            while times and times[0] <= now - self.window_s:
                times.popleft()
            times.append(now)
            self._failures[address] = times  # most recent last
            while len(self._failures) > self.max_clients:
                self._failures.popitem(last=False)

    def __len__(self) -> int:
        """Addresses in the table (at most ``max_clients``)."""
        return len(self._failures)
