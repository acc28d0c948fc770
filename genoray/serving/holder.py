"""What a serving replica keeps: the bundle it serves (:class:`BundleHolder`: loaded at start,
``CURRENT`` watched, a new version loaded on a background thread and verified before a single
reference swap) and the Serve-side behaviour every replica that holds one shares
(:class:`BundleReplica`: a version pin through ``user_config``, a health check).

In-flight requests finish on the version they started with (:meth:`BundleHolder.snapshot`);
a corrupt or unloadable version is refused (and never tried again: versions are immutable)
while the old one keeps serving; one that could not be reached (a transient storage error) is
retried with back-off. A version is leased before it is loaded, and leases are renewed on a
thread of their own. A replica verifies a version's files once per node, not once
per start (:func:`genoray.bundle.store.verified_record`); with ``mmap`` the index files and id tables
are memory-mapped, so replicas on one node share the page cache.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from genoray.bundle import LEASE_TTL_S, BundleManifest, current_version, lease, release
from genoray.config import ServeConfig
from genoray.infra import fs
from genoray.infra.documents import to_json
from genoray.predict import Predictor
from genoray.serving.monitor import DriftMonitor

log = logging.getLogger(__name__)


LEASE_EVERY_S = LEASE_TTL_S / 4  # lease renewal period: a lease survives three missed renewals
RETRY_FIRST_S = 2.0  # the first retry of a version that failed to load for a transient reason
RETRY_MAX_S = 300.0  # back-off cap (doubling from RETRY_FIRST_S)


_PATH = re.compile(r"""(?:s3|gs|file)://[^\s'"]+|(?<![\w.:/])/[^\s'",]+""")


def public_error(message: str | None) -> str | None:
    """``message`` as ``/v1/info`` shows it: local paths and object URIs replaced by ``<path>``
    (a client learns that and why a version was refused, not the node's file layout; the log
    keeps the whole message)."""
    return _PATH.sub("<path>", message) if message else message


def replica_id() -> str:
    """This replica's id as clients see it (``X-Genoray-Replica``, ``/v1/info``): opaque, random
    and stable for the replica's life, never the host name or pid. Inside a Serve replica it is
    Serve's own random replica id (an operator with access to Ray maps it to a process through
    the actor named ``SERVE_REPLICA::<app>#<deployment>#<id>``); elsewhere a random hex id."""
    from ray import serve  # lazy: ray serve (only a replica asks)

    try:
        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # noqa: BLE001 (not in a Serve replica: RayServeException)
        return uuid.uuid4().hex[:12]


def _permanent(e: Exception) -> bool:
    """Whether a load error is about the version itself (corrupt, unsafe, wrong format: versions
    are immutable, so it stays refused) rather than about reaching it (network, storage, a
    missing object that may yet appear: retried with back-off)."""
    return not isinstance(e, OSError)


class BundleHolder:
    """Loads, watches and atomically swaps the bundle a replica serves (``mmap``: index files
    and id tables memory-mapped, see :meth:`genoray.predict.Predictor.from_bundle`).

    A version is leased *before* it is loaded (GC then keeps it while it downloads) and its
    lease is renewed every ``lease_every_s`` by a thread of its own, never by the thread that
    spends minutes loading. A load that fails for a transient reason (an ``OSError``: storage
    unreachable, a timeout) is retried with doubling back-off from ``retry_first_s``; any other
    failure refuses the version for good. ``replica`` is the opaque id in responses
    (``X-Genoray-Replica``, :func:`replica_id`); ``holder`` is the lease name, written only to the
    bundle root for operators: ``<host>-<pid>-<replica>``."""

    def __init__(self, root: str | Path, poll_s: float = ServeConfig.poll_s, holder: str | None = None,
                 mmap: bool = False, trust_remote_code: bool = False, lease_every_s: float = LEASE_EVERY_S,
                 retry_first_s: float = RETRY_FIRST_S):
        self.root: Any = fs.as_path(root)
        self.mmap, self.trust_remote_code = mmap, trust_remote_code  # the operator's flag, never the bundle's
        self.replica = replica_id()
        self.holder = holder or f"{os.uname().nodename}-{os.getpid()}-{self.replica}"
        self._lock = threading.Lock()
        self._lease_lock = threading.Lock()  # a renewal never lands after its release
        self._stop = threading.Event()
        self._leased: set[str] = set()
        self._lease_every_s, self._retry_first_s = lease_every_s, retry_first_s
        self.retry: dict[str, tuple[int, float]] = {}  # version -> (failed tries, monotonic time of the next)
        self.last_error: str | None = None
        target = current_version(self.root)
        if target is not None:
            self._take(target)
        try:
            self.predictor, self.doc = self._open(target)  # synchronous: never serve without a bundle
        except BaseException:
            if target is not None:
                self._drop(target)
            raise
        self.version = self.doc.version
        self._take(self.version)
        self.monitor = DriftMonitor()  # requests, OOD rate, class mix per bundle version
        self.refused: set[str] = set()  # versions are immutable: a refused one stays refused
        self.swaps = 0
        self._poll_s = poll_s
        self._renewer = threading.Thread(target=self._renew, name="bundle-lease", daemon=True)
        self._renewer.start()
        self._thread = threading.Thread(target=self._watch, name="bundle-watch", daemon=True)
        self._thread.start()

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/info`` reports about this replica's bundle."""
        doc = self.doc
        return {"bundle_version": self.version, "encoder": doc.encoder, "fingerprint": doc.fingerprint,
                "classes": list(doc.classes), "index": to_json(doc.index), "created_at": doc.created_at,
                "swaps": self.swaps, "last_error": public_error(self.last_error), "replica": self.replica,
                "watching": self._thread.is_alive(), **self.drift()}

    def drift(self) -> dict[str, Any]:
        """OOD threshold and calibration, target adaptation and this replica's drift counts."""
        predictor, version = self.snapshot()
        ood = predictor.ood.describe() if predictor.ood is not None else {
            "method": "knn-rank (head without a fitted OOD scorer)", "flag_if_score_above": 0.95}
        adapt = predictor.priors.to_dict() if predictor.priors is not None else None
        lc = getattr(predictor.head, "length_calibration_", None)  # temperature per query length
        return {"ood": ood, "length_calibration": lc.describe() if lc is not None else None,
                "target_adaptation": adapt, "drift": self.monitor.snapshot(version)}

    def check(self) -> None:
        """Raise if this holder can no longer follow ``CURRENT`` (Serve's ``check_health``: the
        replica is then replaced instead of serving a stale bundle forever)."""
        if not self._thread.is_alive():
            raise RuntimeError(f"bundle watcher stopped; serving {self.version} without following CURRENT")

    def snapshot(self):
        """The (predictor, version) pair to use for one request or batch."""
        with self._lock:
            return self.predictor, self.version

    def _take(self, version: str) -> None:
        """Lease ``version`` now and keep renewing it (:meth:`_renew`)."""
        with self._lock:
            self._leased.add(version)
        lease(self.root, version, self.holder)

    def _drop(self, version: str) -> None:
        """Stop renewing ``version``'s lease and release it."""
        with self._lease_lock:
            with self._lock:
                self._leased.discard(version)
            release(self.root, version, self.holder)

    def _renew(self) -> None:
        """Renew every lease this holder keeps, on its own thread (a load never delays it)."""
        while not self._stop.wait(self._lease_every_s):
            with self._lock:
                versions = sorted(self._leased)
            for v in versions:
                try:
                    with self._lease_lock:
                        if v in self._leased:  # not released since the snapshot
                            lease(self.root, v, self.holder)
                except Exception as e:  # storage down for a moment: the next renewal is early enough
                    log.warning("cannot renew the lease of %s on %s: %s: %s", self.holder, v, type(e).__name__, e)

    def _due(self, version: str) -> bool:
        """Whether ``version`` may be tried now (not refused, its back-off elapsed)."""
        if version in self.refused:
            return False
        return time.monotonic() >= self.retry.get(version, (0, 0.0))[1]

    def _watch(self) -> None:
        while not self._stop.wait(self._poll_s):
            try:
                target = current_version(self.root)
            except Exception as e:  # e.g. CURRENT mid-rewrite on a network filesystem: next poll
                self.last_error = f"cannot read CURRENT: {type(e).__name__}: {e}"
                log.warning("bundle watcher of %s: %s", self.root, self.last_error)
                continue
            if target and target != self.version and self._due(target):
                try:
                    self.load(target)
                except Exception:  # load() logged and recorded why; keep serving the current bundle
                    log.debug("keeping bundle %s after failing to load %s", self.version, target)

    def _open(self, version: str | None) -> tuple[Predictor, BundleManifest]:
        """Verify and load a version (``None``: CURRENT); :mod:`genoray.serving.scatter` loads less."""
        return Predictor.from_bundle(self.root, version, mmap=self.mmap, trust_remote_code=self.trust_remote_code)

    def load(self, version: str) -> None:
        """Lease, verify and load ``version``, then swap; on any error keep the current bundle
        (a transient error is retried with back-off, any other refuses the version)."""
        self._take(version)
        try:
            predictor, doc = self._open(version)
        except Exception as e:
            if version != self.version:
                self._drop(version)
            if _permanent(e):
                self.refused.add(version)
                self.last_error = f"refused bundle {version}: {type(e).__name__}: {e}"
            else:
                tries = self.retry.get(version, (0, 0.0))[0] + 1
                wait = min(RETRY_MAX_S, self._retry_first_s * 2 ** (tries - 1))
                self.retry[version] = (tries, time.monotonic() + wait)
                self.last_error = (f"bundle {version} not loaded (try {tries}, again in {wait:.0f} s): "
                                   f"{type(e).__name__}: {e}")
            log.error(self.last_error)
            raise
        self.retry.pop(version, None)
        with self._lock:
            old = self.version
            self.predictor, self.doc, self.version = predictor, doc, version
            self.swaps += 1
            self.last_error = None  # with the swap: a reader that sees the new version sees no old error
        if old != version:
            self._drop(old)
        log.info("swapped bundle %s -> %s", old, version)

    def close(self) -> None:
        """Stop watching and renewing, and release the lease of the version in use."""
        self._stop.set()
        with self._lock:
            self._leased.clear()
        release(self.root, self.version, self.holder)



class BundleReplica:
    """What every Serve replica that holds a bundle shares (``GenorayModel``, ``GenorayReplica``,
    a shard group's model): a ``self.holder`` (:class:`BundleHolder`) that follows ``CURRENT``,
    a version pin through Serve's ``user_config``, and a health check."""

    holder: Any

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """``{"version": V}`` loads V in the background; the current one keeps serving meanwhile."""
        version = (user_config or {}).get("version")
        if version and version != self.holder.version:
            threading.Thread(target=self._load_quietly, args=(version,), daemon=True).start()

    def _load_quietly(self, version: str) -> None:
        try:
            self.holder.load(version)
        except Exception as e:  # the current bundle keeps serving
            log.warning("pinned version %s not loaded, still serving %s: %s", version, self.holder.version, e)

    def check_health(self) -> None:
        """Fails when the bundle watcher stopped (a dead watcher would pin an old bundle forever:
        Serve then replaces the replica)."""
        self.holder.check()

    def __del__(self):
        holder = getattr(self, "holder", None)
        if holder is not None:
            holder.close()
