"""Failed API-key attempts per client address (the HTTP API's answer to key guessing).

After ``limit`` wrong keys from one client address within ``window_s`` seconds, that address
gets 429 with ``Retry-After`` for every request that needs a key, the right key included,
until the oldest of those failures is ``window_s`` old. Only a key that was presented and is
wrong counts (a request without one is a 401 that guesses nothing). The table is an LRU of at
most ``max_clients`` addresses, each with at most ``limit`` timestamps: its memory is bounded
whatever the number of addresses an attacker uses (the least recently failing ones are
forgotten first). Per ingress replica, like the per-key rate limit.

The address (:class:`ClientAddress`) is the TCP peer the ingress sees with ``ingress="proxy"``
(the client's own address behind Serve's proxy). Behind HAProxy (``ingress="haproxy"``) the
peer is HAProxy for every client, so there it is the ``X-Forwarded-For`` that HAProxy put in
place of any the client sent, trusted only when the request carries the ingress secret that
HAProxy adds (:mod:`genoray.serving.haproxy`); a request without it (a client that reached a
replica's port directly) keeps its TCP peer, whatever it claims. A replica whose environment
has no secret (a cluster whose ``ray start`` lacks it) cannot tell clients apart and does not
lock any out (it logs a warning once). See ``docs/security.md``.
"""

from __future__ import annotations

import hmac
import logging
import math
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from starlette.requests import Request

from genoray.serving.haproxy import INGRESS_HEADER, INGRESS_SECRET_ENV

log = logging.getLogger(__name__)


class ClientAddress:
    """The address a request's failed keys count against: ``address(request)``.

    ``behind_haproxy`` off: the TCP peer. On: ``X-Forwarded-For`` when the request carries
    ``$GENORAY_INGRESS_SECRET`` in ``X-Genoray-Ingress`` (compared in constant time; only HAProxy
    sets it, replacing whatever the client sent), else the TCP peer; ``None`` (unknown: no
    lockout) when this process has no secret. The secret is read from this process's environment
    on first use, so it never travels in the pickled app (Ray's GCS).
    """

    def __init__(self, behind_haproxy: bool = False):
        self.behind_haproxy = behind_haproxy
        self._secret: bytes | None = None

    def secret(self) -> bytes:
        """The ingress secret of this process (empty when unset)."""
        if self._secret is None:
            self._secret = os.environ.get(INGRESS_SECRET_ENV, "").encode()
            if self.behind_haproxy and not self._secret:
                log.warning("%s is not set in this replica's environment: clients behind HAProxy cannot be told "
                            "apart, so wrong API keys lock no address out (start Ray with "
                            "genoray.serving.haproxy.haproxy_env(), see cluster.yaml)", INGRESS_SECRET_ENV)
        return self._secret

    def __call__(self, request: Request) -> str | None:
        """The client address of ``request`` (``None`` when it cannot be known)."""
        peer = request.client.host if request.client else ""
        if not self.behind_haproxy:
            return peer
        secret = self.secret()
        if not secret:
            return None
        sent = request.headers.get(INGRESS_HEADER, "").encode("latin-1", "replace")
        forwarded = request.headers.getlist("x-forwarded-for")
        if hmac.compare_digest(sent, secret) and len(forwarded) == 1 and forwarded[0].strip():
            return forwarded[0].strip()  # HAProxy's %[src]: one address, set by HAProxy alone
        return peer


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
