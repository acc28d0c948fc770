"""The HTTP API of the predictor, independent of how it is hosted.

:func:`create_app` builds the FastAPI app (pydantic request/response models, OpenAPI schema):

* ``POST /v1/predict``: sequences (and optional ids, k) -> label, probabilities, neighbours,
  OOD score and the bundle version that answered.
* ``GET /v1/health``: liveness. ``GET /v1/ready``: 200 only once a bundle is loaded.
* ``GET /v1/info``: bundle version, encoder, index type and counts (needs the API key).

Limits: per-key token-bucket rate limit (429 with ``Retry-After``; per ingress replica, off by
default), request body (413, checked on the byte stream before JSON parsing), number of
sequences, sequence length and total bases (422 naming the field), alphabet (422 naming the
sequence and position); API keys as ``Authorization: Bearer <key>`` (401 otherwise), compared
by sha256 digest in constant time. Keys come from the environment (``GENORAY_API_KEYS``,
comma-separated), never from files in the repository.

:class:`BundleHolder` owns the loaded predictor: it loads ``CURRENT`` synchronously at start,
then watches ``CURRENT`` and loads a new version on a background thread, verifying it before a
single reference swap, so in-flight requests finish on the version they started with and a
corrupt bundle is refused while the old one keeps serving. The same app runs under Ray Serve
(:mod:`genoray.serve`) and under plain uvicorn (the benchmark baseline).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceLimits:
    max_body_bytes: int = 1 << 20
    max_sequences: int = 64
    max_length: int = 10_000
    max_total_bases: int = 200_000
    max_k: int = 100
    rate_per_key: float = 0.0  # requests/s per API key and ingress replica (or app); 0 = no rate limit
    burst_per_key: int = 20


class TokenBucket:
    """Per-key token buckets: ``rate`` tokens/s up to ``burst``; ``take`` returns the seconds
    to wait (0 when a token was taken)."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self._state: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        now = time.monotonic()
        with self._lock:
            tokens, last = self._state.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._state[key] = (tokens - 1.0, now)
                return 0.0
            self._state[key] = (tokens, now)
            return (1.0 - tokens) / self.rate


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def keys_from_env(var: str = "GENORAY_API_KEYS") -> tuple[str, ...]:
    """sha256 digests of the comma-separated keys in ``$var`` (plaintext never kept)."""
    return tuple(hash_key(k.strip()) for k in os.environ.get(var, "").split(",") if k.strip())


class PredictRequest(BaseModel):
    sequences: list[str] = Field(..., min_length=1, description="DNA sequences (A/C/G/T/N, IUPAC codes map to N)")
    ids: list[str] | None = Field(None, description="optional ids; an id present in the index does not vote for itself")
    k: int = Field(10, ge=1, description="neighbours returned per sequence")


class NeighbourOut(BaseModel):
    seq_id: str
    label: str
    similarity: float


class PredictionOut(BaseModel):
    seq_id: str | None
    label: str
    probabilities: dict[str, float]
    neighbours: list[NeighbourOut]
    ood_score: float
    ood: bool = False
    adaptation: dict[str, Any] | None = None


class PredictResponse(BaseModel):
    bundle_version: str
    predictions: list[PredictionOut]


class ErrorOut(BaseModel):
    detail: str


_ERRORS = {  # documented in the OpenAPI schema (what the API can answer besides 200 and 422)
    400: "body is not valid JSON",
    401: "missing or invalid API key",
    413: "request body too large",
    429: "rate limit exceeded for this API key (Retry-After)",
    503: "no bundle loaded, or every model replica is busy (Retry-After)",
    504: "the prediction did not finish in time",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: {"description": _ERRORS[c], "model": ErrorOut} for c in codes}


class BundleHolder:
    """Loads, watches and atomically swaps the bundle a replica serves."""

    def __init__(self, root: str | Path, poll_s: float = 2.0, holder: str | None = None):
        from genoray.bundle import lease, load_bundle

        self.root = Path(root)
        self.holder = holder or f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.predictor, self.doc = load_bundle(self.root)  # synchronous: never serve without a bundle
        self.version = self.doc["version"]
        lease(self.root, self.version, self.holder)
        self.last_error: str | None = None
        from genoray.monitor import DriftMonitor

        self.monitor = DriftMonitor()  # requests, OOD rate, class mix per bundle version
        self.refused: set[str] = set()  # versions are immutable: a refused one stays refused
        self.swaps = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._poll_s = poll_s
        self._thread = threading.Thread(target=self._watch, name="bundle-watch", daemon=True)
        self._thread.start()

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/info`` reports about this replica's bundle."""
        doc = self.doc
        return {"bundle_version": self.version, "encoder": doc["encoder"], "fingerprint": doc["fingerprint"],
                "classes": doc["classes"], "index": doc["index"], "created_at": doc["created_at"],
                "swaps": self.swaps, "last_error": self.last_error, "replica": self.holder,
                "watching": self._thread.is_alive(), **self.drift()}

    def drift(self) -> dict[str, Any]:
        """OOD threshold and calibration, target adaptation and this replica's drift counts."""
        predictor, version = self.snapshot()
        ood = predictor.ood.describe() if predictor.ood is not None else {
            "method": "knn-rank (head without a fitted OOD scorer)", "flag_if_score_above": 0.95}
        adapt = predictor.priors.to_dict() if predictor.priors is not None else None
        return {"ood": ood, "target_adaptation": adapt, "drift": self.monitor.snapshot(version)}

    def check(self) -> None:
        """Raise if this holder can no longer follow ``CURRENT`` (Serve's ``check_health``: the
        replica is then replaced instead of serving a stale bundle forever)."""
        if not self._thread.is_alive():
            raise RuntimeError(f"bundle watcher stopped; serving {self.version} without following CURRENT")

    def snapshot(self):
        """The (predictor, version) pair to use for one request or batch."""
        with self._lock:
            return self.predictor, self.version

    def _watch(self) -> None:
        from genoray.bundle import current_version, lease

        while not self._stop.wait(self._poll_s):
            try:
                target = current_version(self.root)
                lease(self.root, self.version, self.holder)
                if target and target != self.version and target not in self.refused:
                    self.load(target)
            except Exception:  # load() recorded why; keep serving the current bundle
                pass

    def load(self, version: str) -> None:
        """Verify and load ``version``, then swap; on any error keep the current bundle."""
        from genoray.bundle import lease, load_bundle, release

        try:
            predictor, doc = load_bundle(self.root, version)
        except Exception as e:
            self.refused.add(version)
            self.last_error = f"refused bundle {version}: {e}"
            log.error(self.last_error)
            raise
        lease(self.root, version, self.holder)
        with self._lock:
            old = self.version
            self.predictor, self.doc, self.version = predictor, doc, version
            self.swaps += 1
        release(self.root, old, self.holder)
        self.last_error = None
        log.info("swapped bundle %s -> %s", old, version)

    def close(self) -> None:
        from genoray.bundle import release

        self._stop.set()
        release(self.root, self.version, self.holder)


def predict_batch(holder: BundleHolder, requests: list[PredictRequest]) -> list[dict[str, Any]]:
    """Run several requests as one predictor call (one bundle version for the whole batch)."""
    predictor, version = holder.snapshot()
    seqs, ids, spans = [], [], []
    for r in requests:
        spans.append((len(seqs), len(seqs) + len(r.sequences)))
        seqs.extend(r.sequences)
        ids.extend(r.ids if r.ids is not None else [None] * len(r.sequences))
    k = max(r.k for r in requests)
    preds = predictor.predict(seqs, ids=ids, k=k)
    holder.monitor.record(version, [p.label for p in preds], [p.ood for p in preds])
    out = []
    for r, (a, b) in zip(requests, spans):
        items = [p.to_dict() for p in preds[a:b]]
        for it in items:
            it["neighbours"] = it["neighbours"][: r.k]
        out.append({"bundle_version": version, "predictions": items, "replica": holder.holder})
    return out


async def predict_async(holder: BundleHolder, requests: list[PredictRequest]) -> list[dict[str, Any]]:
    """:func:`predict_batch` on a worker thread, so the event loop keeps serving meanwhile."""
    import asyncio

    return await asyncio.get_running_loop().run_in_executor(None, predict_batch, holder, requests)


class Backend:
    """Where the API's work happens. :class:`LocalBackend` runs it in this process; the Ray
    Serve ingress (:mod:`genoray.serve`) forwards it to model replicas."""

    async def predict(self, req: PredictRequest) -> dict[str, Any]:
        """``predict_batch`` output for one request (with its ``replica``)."""
        raise NotImplementedError

    async def info(self) -> dict[str, Any] | None:
        """``BundleHolder.describe()`` of a replica, or None when none is ready."""
        raise NotImplementedError


class LocalBackend(Backend):
    """One in-process :class:`BundleHolder`; predictions run on a worker thread."""

    def __init__(self, holder: BundleHolder):
        self.holder = holder

    async def predict(self, req: PredictRequest) -> dict[str, Any]:
        return (await predict_async(self.holder, [req]))[0]

    async def info(self) -> dict[str, Any] | None:
        return self.holder.describe()


def validate(req: PredictRequest, limits: ServiceLimits, cleaner) -> None:
    """422 with the JSON path of the first problem."""
    def bad(loc: list, msg: str):
        raise HTTPException(status_code=422, detail=[{"loc": ["body", *loc], "msg": msg, "type": "value_error"}])

    if len(req.sequences) > limits.max_sequences:
        bad(["sequences"], f"at most {limits.max_sequences} sequences per request, got {len(req.sequences)}")
    if req.ids is not None and len(req.ids) != len(req.sequences):
        bad(["ids"], f"{len(req.ids)} ids for {len(req.sequences)} sequences")
    if req.k > limits.max_k:
        bad(["k"], f"k must be <= {limits.max_k}")
    total = 0
    for i, s in enumerate(req.sequences):
        if len(s) > limits.max_length:
            bad(["sequences", i], f"sequence length {len(s)} > limit {limits.max_length}")
        total += len(s)
        _, why = cleaner(s)
        if why is not None:
            bad(["sequences", i], why)
    if total > limits.max_total_bases:
        bad(["sequences"], f"{total} bases in total > limit {limits.max_total_bases}")


class BodyLimit:
    """ASGI middleware: 413 once a request body exceeds ``max_bytes`` (declared or streamed)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await _reject_413(send, self.max_bytes)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge()
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await _reject_413(send, self.max_bytes)


class _TooLarge(Exception):
    pass


async def _reject_413(send, limit: int) -> None:
    body = ('{"detail":"request body larger than %d bytes"}' % limit).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def create_app(
    backend: Backend,
    key_hashes: tuple[str, ...] = (),
    require_key: bool = True,
    limits: ServiceLimits | None = None,
) -> FastAPI:
    """The genoray HTTP API; ``backend`` does the work (batched model replicas under Ray Serve)."""
    from genoray.config import CleanPolicy
    from genoray.sequences import Cleaner

    limits = limits or ServiceLimits()
    cleaner = Cleaner(CleanPolicy(max_length=limits.max_length))
    if require_key and not key_hashes:
        raise ValueError("no API keys configured: set GENORAY_API_KEYS, or disable auth explicitly for local use")
    app = FastAPI(title="genoray predictor", version="1", description=__doc__.split("\n\n")[0])

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # location and message only: never echo the input back (it may be a genome, or a
        # value such as Infinity that JSON cannot encode; found by the property tests)
        detail = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
                  for e in exc.errors()]
        return JSONResponse({"detail": detail}, status_code=422)

    buckets = TokenBucket(limits.rate_per_key, limits.burst_per_key) if limits.rate_per_key > 0 else None

    def auth(request: Request) -> None:
        digest = ""
        if require_key:
            header = request.headers.get("authorization", "")
            scheme, _, token = header.partition(" ")
            digest = hash_key(token.strip()) if scheme.lower() == "bearer" and token.strip() else ""
            if not digest or not any(hmac.compare_digest(digest, k) for k in key_hashes):
                raise HTTPException(status_code=401, detail="missing or invalid API key",
                                    headers={"WWW-Authenticate": "Bearer"})
        if buckets is not None:
            wait = buckets.take(digest or (request.client.host if request.client else ""))
            if wait > 0:
                raise HTTPException(status_code=429, detail="rate limit exceeded for this API key",
                                    headers={"Retry-After": str(max(1, round(wait + 0.5)))})

    @app.get("/v1/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/ready", responses={503: {"description": "no bundle loaded yet"}})
    async def ready():
        info = await backend.info()
        if info is None:
            return JSONResponse({"ready": False}, status_code=503)
        return {"ready": True, "bundle_version": info["bundle_version"]}

    @app.get("/v1/info", dependencies=[Depends(auth)], responses=error_responses(401, 429, 503, 504))
    async def info() -> dict[str, Any]:
        info = await backend.info()
        if info is None:
            raise HTTPException(status_code=503, detail="no bundle loaded")
        return {**info, "limits": limits.__dict__}

    @app.post("/v1/predict", response_model=PredictResponse, dependencies=[Depends(auth)],
              responses=error_responses(400, 401, 413, 429, 503, 504))
    async def predict(req: PredictRequest, response: Response) -> dict[str, Any]:
        validate(req, limits, cleaner)
        t0 = time.perf_counter()
        out = await backend.predict(req)
        response.headers["X-Genoray-Replica"] = out.pop("replica", "")
        log.debug("predict n=%d %.1f ms", len(req.sequences), 1000 * (time.perf_counter() - t0))
        return out

    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    return app
