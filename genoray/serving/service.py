"""The HTTP API of the predictor, independent of how it is hosted.

:func:`create_app` builds the FastAPI app (pydantic request/response models, OpenAPI schema):

* ``POST /v1/predict``: sequences (and optional ids, k) -> label, probabilities, neighbours,
  OOD score and the bundle version that answered.
* ``GET /v1/health``: liveness. ``GET /v1/ready``: 200 only once a bundle is loaded.
* ``GET /v1/info``: bundle version, encoder, index type and counts (needs the API key).
* ``GET /ui``: the query page (:mod:`genoray.serving.page`; static, strict CSP; it calls the two above).
* ``GET /openapi.json``, ``/docs``, ``/redoc``: the schema and its viewers (need the API key
  when keys are required).

Limits: per-key token-bucket rate limit (429 with ``Retry-After``; per ingress replica, off by
default), request body (413, checked on the byte stream before JSON parsing, also for a chunked
body), number of
sequences, sequence length and total bases (422 naming the field), alphabet and N fraction
(422 naming the sequence and position; checked where the bundle is, with the cleaning policy
the store was built with, once per request); API keys as ``Authorization: Bearer <key>`` (401 otherwise), compared
by sha256 digest in constant time. Keys come from the environment (``GENORAY_API_KEYS``,
comma-separated), never from files in the repository. Wrong keys from one client address can be
limited (429 for that address for a window, :mod:`genoray.serving.lockout`; off by default, see
``docs/security.md``); behind HAProxy
(``behind_haproxy``) the client address is the one HAProxy forwards, trusted only with its
ingress secret (:class:`~genoray.serving.lockout.ClientAddress`).

The work behind the API is a :class:`Backend`; every backend (in-process, Ray Serve model
replicas, HAProxy direct-ingress replicas) lives in :mod:`genoray.serving.app`, and the loaded,
watched bundle they serve is a :class:`genoray.serving.holder.BundleHolder`. The same app runs under
Ray Serve and under plain uvicorn (the benchmark baseline).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
from typing import Any, Protocol

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from genoray.config import ServiceLimits  # noqa: F401 (defined in config.py)
from genoray.serving.lockout import ClientAddress, FailedKeys
from genoray.serving.page import mount_page

log = logging.getLogger(__name__)


class TokenBucket:
    """Per-key token buckets: ``rate`` tokens/s up to ``burst``; ``take`` returns the seconds
    to wait (0 when a token was taken)."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self._state: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """Take a token for ``key``: 0 when taken, else the seconds until one is available."""
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
    """sha256 hex digest of an API key."""
    return hashlib.sha256(key.encode()).hexdigest()


def keys_from_env(var: str = "GENORAY_API_KEYS") -> tuple[str, ...]:
    """sha256 digests of the comma-separated keys in ``$var`` (plaintext never kept)."""
    return tuple(hash_key(k.strip()) for k in os.environ.get(var, "").split(",") if k.strip())


class PredictRequest(BaseModel):
    """Body of ``POST /v1/predict``."""

    sequences: list[str] = Field(..., min_length=1, description="DNA sequences (A/C/G/T/N, IUPAC codes map to N)")
    ids: list[str] | None = Field(None, description="optional ids; an id present in the index does not vote for itself")
    k: int = Field(10, ge=1, description="neighbours returned per sequence")


class NeighbourOut(BaseModel):
    """One neighbour in a prediction."""

    seq_id: str
    label: str
    similarity: float


class PredictionOut(BaseModel):
    """The prediction for one sequence."""

    seq_id: str | None
    label: str
    probabilities: dict[str, float]
    neighbours: list[NeighbourOut]
    ood_score: float
    ood: bool = False
    adaptation: dict[str, Any] | None = None


class PredictResponse(BaseModel):
    """Body of a 200 answer to ``POST /v1/predict``."""

    bundle_version: str
    predictions: list[PredictionOut]


class ErrorOut(BaseModel):
    """Body of an error answer."""

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
    """OpenAPI ``responses`` entries for the given status codes."""
    return {c: {"description": _ERRORS[c], "model": ErrorOut} for c in codes}


class Backend(Protocol):
    """Where the API's work happens: ``genoray.serving.app.LocalBackend`` runs it in this process;
    the Ray Serve backends in :mod:`genoray.serving.app` forward it to replicas that hold a bundle."""

    async def predict(self, req: PredictRequest) -> dict[str, Any]:
        """``genoray.serving.app.predict_batch`` output for one request (with its ``replica``)."""
        ...

    async def info(self) -> dict[str, Any] | None:
        """``BundleHolder.describe()`` of a replica, or None when none is ready."""
        ...


def unprocessable(loc: list, msg: str) -> HTTPException:
    """The API's 422: the JSON path of the problem and what is wrong (never the input)."""
    return HTTPException(status_code=422, detail=[{"loc": ["body", *loc], "msg": msg, "type": "value_error"}])


def validate(req: PredictRequest, limits: ServiceLimits) -> None:
    """422 with the JSON path of the first problem with the request's size, ids or k. The
    sequences' alphabet and content are checked where the bundle is, with the policy the
    store was cleaned with (:func:`genoray.serving.app.predict_batch`)."""
    def bad(loc: list, msg: str):
        raise unprocessable(loc, msg)

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
        seen, too_large, answered = 0, False, False

        async def limited():  # past the limit the app sees the body end: it fails fast, its answer is replaced
            nonlocal seen, too_large
            if too_large:
                return {"type": "http.request", "body": b"", "more_body": False}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    too_large = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        async def guarded(message):  # FastAPI turns any error while reading the body into a 400: not ours
            nonlocal answered
            if not too_large:
                return await send(message)
            if not answered:
                answered = True
                await _reject_413(send, self.max_bytes)

        await self.app(scope, limited, guarded)


async def _reject_413(send, limit: int) -> None:
    body = f'{{"detail":"request body larger than {limit} bytes"}}'.encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def create_app(
    backend: Backend,
    key_hashes: tuple[str, ...] = (),
    require_key: bool = True,
    limits: ServiceLimits | None = None,
    behind_haproxy: bool = False,
) -> FastAPI:
    """The genoray HTTP API; ``backend`` does the work (batched model replicas under Ray Serve).
    ``behind_haproxy``: the app serves ``ingress="haproxy"`` replicas, whose TCP peer is HAProxy
    (client addresses: :class:`~genoray.serving.lockout.ClientAddress`)."""
    limits = limits or ServiceLimits()
    if require_key and not key_hashes:
        raise ValueError("no API keys configured: set GENORAY_API_KEYS, or disable auth explicitly for local use")
    hidden: dict[str, Any] = {"openapi_url": None, "docs_url": None, "redoc_url": None} if require_key else {}
    app = FastAPI(title="genoray predictor", version="1", description=__doc__.split("\n\n")[0], **hidden)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # location and message only: never echo the input back (it may be a genome, or a
        # value such as Infinity that JSON cannot encode; found by the property tests)
        detail = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
                  for e in exc.errors()]
        return JSONResponse({"detail": detail}, status_code=422)

    buckets = TokenBucket(limits.rate_per_key, limits.burst_per_key) if limits.rate_per_key > 0 else None

    failed = (FailedKeys(limits.failed_keys_per_client, limits.failed_keys_window_s, limits.failed_keys_clients)
              if require_key and limits.failed_keys_per_client > 0 else None)
    client_address = ClientAddress(behind_haproxy)

    def auth(request: Request) -> None:
        digest = ""
        if require_key:
            address = client_address(request) if failed is not None else None
            if failed is not None and address is not None and (locked := failed.retry_after(address)):
                raise HTTPException(status_code=429, detail="too many wrong API keys from this address",
                                    headers={"Retry-After": str(locked)})
            header = request.headers.get("authorization", "")
            scheme, _, token = header.partition(" ")
            digest = hash_key(token.strip()) if scheme.lower() == "bearer" and token.strip() else ""
            if not digest or not any(hmac.compare_digest(digest, k) for k in key_hashes):
                if failed is not None and address is not None and header:
                    failed.failed(address)
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
        validate(req, limits)
        t0 = time.perf_counter()
        out = await backend.predict(req)
        response.headers["X-Genoray-Replica"] = out.pop("replica", "")
        if "error" in out:  # a sequence the bundle's cleaning policy rejects
            raise unprocessable(out["error"]["loc"], out["error"]["msg"])
        log.debug("predict n=%d %.1f ms", len(req.sequences), 1000 * (time.perf_counter() - t0))
        return out

    if require_key:  # the schema and its viewers need a key too (they describe every limit and route)
        @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(auth)])
        def openapi() -> JSONResponse:
            return JSONResponse(app.openapi())

        @app.get("/docs", include_in_schema=False, dependencies=[Depends(auth)])
        def docs() -> HTMLResponse:
            return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - docs")

        @app.get("/redoc", include_in_schema=False, dependencies=[Depends(auth)])
        def redoc() -> HTMLResponse:
            return get_redoc_html(openapi_url="/openapi.json", title=f"{app.title} - ReDoc")

    mount_page(app)  # GET /ui: the query page (genoray.serving.page), over the two routes above
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    return app
