"""Ray Serve hosting of the predictor API (:mod:`genoray.service`).

``build_app(ServeConfig)`` returns a Serve application of two deployments:

* ``GenorayModel``: the replicas that do the work. Each holds a
  :class:`~genoray.bundle.BundleHolder` (bundle loaded synchronously in the constructor, then
  ``CURRENT`` watched and swapped on a background thread) and batches concurrent calls with
  ``@serve.batch``. Autoscaled; the per-replica queue is bounded.
* ``GenorayIngress``: the FastAPI app (auth, body/size limits, rate limit; each sequence is
  cleaned and checked by the model replica, with the bundle's cleaning policy). It forwards
  each validated request to a model replica and **retries it on another replica when the one
  it was sent to dies** (a prediction is a pure function of the request and the bundle, so a
  retry is safe). A full model queue becomes 503 with ``Retry-After``; a prediction that does
  not finish within ``predict_timeout_s`` becomes 504.

That is ``ingress="proxy"``: Serve's Python HTTP proxy in front, everything on loopback.
``ingress="haproxy"`` (the default) is Ray's high-throughput mode (``RAY_SERVE_ENABLE_HA_PROXY``,
``RAY_SERVE_THROUGHPUT_OPTIMIZED``): HAProxy listens on the port and balances over replicas
that each serve HTTP themselves (direct ingress). Each replica is then ``GenorayReplica``: the
API and a bundle in one process, batching its own concurrent requests, so a request costs no
Ray hop at all. HAProxy resends a request whose replica died before answering
(``retry-on conn-failure empty-response 500 502``) to another replica. Ray reads this mode from the
environment of its processes, so it must be set before Ray starts (:func:`haproxy_env`; the
CLI does it; on a cluster, in ``cluster.yaml``), and :mod:`genoray.haproxy` binds HAProxy's
stats and metrics listeners to the service's host.

Batching takes only what is already queued (``batch_wait_timeout_s=0``): a lone request is
answered at once, and while a batch runs the requests that arrive meanwhile queue up and form
the next one, so batches grow with the load without a fixed wait. Replicas memory-map the
index (``mmap``) and declare their memory to Ray (:mod:`genoray.replica_memory`).

The end-to-end request timeout (408) and the bind address are Serve HTTP options
(``start_http``), 127.0.0.1 by default. ``reconfigure`` (Serve ``user_config``) of the model
deployment can pin a version, e.g. for a rollback drill; normally replicas follow ``CURRENT``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from genoray.bundle import BundleHolder
    from genoray.service import PredictRequest

from genoray.config import ServeConfig  # noqa: F401 (defined in config.py; imported from here by callers)
from genoray.haproxy import HAPROXY_RETRY_ON, haproxy_env  # noqa: F401 (imported from here by callers)

log = logging.getLogger(__name__)


INGRESS_MODES = ("auto", "proxy", "haproxy")


def resolve_ingress(cfg: ServeConfig, groups: int | None = None) -> str:
    """The topology ``cfg`` runs: ``"auto"`` is HAProxy for a bundle of one shard group and the
    proxy topology for a grouped one (searcher deployments sit behind the model replicas).
    ``groups``: the CURRENT bundle's shard groups when the caller has read them already."""
    if cfg.ingress != "auto":
        return cfg.ingress
    if groups is None:
        from genoray.scatter import served_groups

        groups = served_groups(cfg.root)
    return "proxy" if groups > 1 else "haproxy"


def start_http(cfg: ServeConfig) -> None:
    """Start Serve's HTTP proxy on ``cfg.host:cfg.port`` with the request timeout."""
    from ray import serve

    serve.start(http_options={"host": cfg.host, "port": cfg.port, "request_timeout_s": cfg.request_timeout_s},
                logging_config={"enable_access_log": cfg.access_log})


def predict_batch(holder: BundleHolder, requests: list[PredictRequest]) -> list[dict[str, Any]]:
    """Run several requests as one predictor call (one bundle version for the whole batch).

    Each request's sequences are cleaned once, with the bundle's policy (the store's
    :class:`~genoray.config.CleanPolicy`); a request with a rejected sequence gets
    ``{"error": {"loc": ["sequences", i], "msg": reason}}`` (the API's 422) and does not
    disturb the others in its batch.
    """
    from genoray.dna import InvalidSequence

    predictor, version = holder.snapshot()
    seqs: list[str] = []
    ids: list[str | None] = []
    spans: list[tuple[int, int] | dict[str, Any]] = []
    for r in requests:
        try:
            clean = predictor.clean(r.sequences)
        except InvalidSequence as e:
            spans.append({"loc": ["sequences", e.index], "msg": e.reason})
            continue
        spans.append((len(seqs), len(seqs) + len(clean)))
        seqs.extend(clean)
        ids.extend(r.ids if r.ids is not None else [None] * len(clean))
    valid = [r for r, span in zip(requests, spans) if isinstance(span, tuple)]
    preds = predictor.predict(seqs, ids=ids, k=max(r.k for r in valid), cleaned=True) if valid else []
    holder.monitor.record(version, [p.label for p in preds], [p.ood for p in preds])
    out = []
    for r, span in zip(requests, spans):
        if isinstance(span, dict):
            out.append({"bundle_version": version, "error": span, "replica": holder.holder})
            continue
        items = [p.to_dict() for p in preds[span[0]:span[1]]]
        for it in items:
            it["neighbours"] = it["neighbours"][: r.k]
        out.append({"bundle_version": version, "predictions": items, "replica": holder.holder})
    return out


async def predict_async(holder: BundleHolder, requests: list[PredictRequest]) -> list[dict[str, Any]]:
    """:func:`predict_batch` on a worker thread, so the event loop keeps serving meanwhile."""
    import asyncio

    return await asyncio.get_running_loop().run_in_executor(None, predict_batch, holder, requests)


class LocalBackend:
    """The :class:`~genoray.service.Backend` of a plain app: one in-process
    :class:`~genoray.bundle.BundleHolder`; predictions run on a worker thread."""

    def __init__(self, holder: BundleHolder):
        self.holder = holder

    async def predict(self, req: PredictRequest) -> dict[str, Any]:
        """Predict one request on a worker thread."""
        return (await predict_async(self.holder, [req]))[0]

    async def info(self) -> dict[str, Any] | None:
        """The holder's bundle description."""
        return self.holder.describe()


class ServeBackend:
    """:class:`~genoray.service.Backend` that forwards to the model deployment through its handle."""

    def __init__(self, model, timeout_s: float, retries: int):
        self.model, self.timeout_s, self.retries = model, timeout_s, retries

    async def _call(self, method: str, *args):
        from fastapi import HTTPException
        from ray.exceptions import ActorDiedError, ActorUnavailableError
        from ray.serve.exceptions import BackPressureError, ReplicaUnavailableError

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        for attempt in range(self.retries + 1):
            response = getattr(self.model, method).remote(*args)
            try:
                return await asyncio.wait_for(response, max(0.001, deadline - loop.time()))
            except BackPressureError:
                raise HTTPException(503, "all model replicas are busy; retry later",
                                    headers={"Retry-After": "1"}) from None
            except TimeoutError:
                response.cancel()
                raise HTTPException(504, f"prediction did not finish within {self.timeout_s:g} s") from None
            except (ActorDiedError, ActorUnavailableError, ReplicaUnavailableError) as e:
                log.warning("model replica lost during %s (attempt %d): %s", method, attempt + 1, type(e).__name__)
                if attempt == self.retries or loop.time() >= deadline:
                    raise HTTPException(503, "model replicas unavailable; retry later",
                                        headers={"Retry-After": "1"}) from e
                await asyncio.sleep(min(0.05 * 2**attempt, max(0.0, deadline - loop.time())))

    async def predict(self, req) -> dict[str, Any]:
        """Forward one request to a model replica (retried on another when it dies)."""
        return await self._call("predict", req)

    async def info(self) -> dict[str, Any] | None:
        """A model replica's bundle description, or ``None`` when none answers."""
        from fastapi import HTTPException

        try:
            return await self._call("info")
        except HTTPException:
            return None


def build_app(cfg: ServeConfig):
    """The Serve application for ``cfg`` (deploy with ``serve.run(app, route_prefix="/")``)."""
    from ray import serve

    from genoray.bundle import BundleHolder
    from genoray.replica_memory import replica_actor_options
    from genoray.service import create_app, keys_from_env

    key_hashes = cfg.key_hashes or keys_from_env()
    limits = cfg.limits
    if cfg.require_key and not key_hashes:  # fail here, not in a replica constructor retried 20 times
        raise ValueError("no API keys configured: set GENORAY_API_KEYS, or disable auth explicitly for local use")
    if cfg.ingress not in INGRESS_MODES:
        raise ValueError(f"ingress must be one of {INGRESS_MODES}, got {cfg.ingress!r}")
    replica_options: dict[str, Any] = dict(  # the replicas that hold a bundle, in either topology
        autoscaling_config={
            "min_replicas": cfg.min_replicas, "max_replicas": cfg.max_replicas,
            "target_ongoing_requests": cfg.target_ongoing_requests,
            "upscale_delay_s": cfg.upscale_delay_s, "downscale_delay_s": cfg.downscale_delay_s,
            "metrics_interval_s": 1.0, "look_back_period_s": 5.0,
        },
        max_ongoing_requests=cfg.max_ongoing_requests,
        max_queued_requests=cfg.max_queued_requests,
        ray_actor_options=replica_actor_options(cfg),
        health_check_period_s=cfg.health_check_period_s,
        health_check_timeout_s=20,
        graceful_shutdown_timeout_s=cfg.graceful_shutdown_timeout_s,
        logging_config={"enable_access_log": cfg.access_log},
    )
    from genoray.scatter import group_model, served_groups

    groups = served_groups(cfg.root)  # > 1: a searcher deployment per shard group (genoray.scatter)
    if resolve_ingress(cfg, groups) == "haproxy":
        if groups > 1:
            raise ValueError(f"{cfg.root}: the bundle has {groups} shard groups; serve it with ingress='proxy' or 'auto'")
        return _replica_app(cfg, key_hashes, limits, replica_options)

    @serve.deployment(**replica_options)
    class GenorayModel(_BundleReplica):
        def __init__(self, root: str, poll_s: float):
            self.holder = BundleHolder(root, poll_s=poll_s, mmap=cfg.mmap)

        @serve.batch(max_batch_size=cfg.max_batch_size, batch_wait_timeout_s=cfg.batch_wait_timeout_s)
        async def predict(self, requests: list[PredictRequest]) -> list[dict[str, Any]]:
            return await predict_async(self.holder, requests)

        def info(self) -> dict[str, Any]:
            return self.holder.describe()

    app = create_app(_IngressBackend(), key_hashes=key_hashes, require_key=cfg.require_key, limits=limits)

    @serve.deployment(
        num_replicas=cfg.ingress_replicas,
        max_ongoing_requests=cfg.ingress_max_ongoing_requests,
        max_queued_requests=cfg.max_queued_requests,
        ray_actor_options={"num_cpus": cfg.ingress_num_cpus},
        graceful_shutdown_timeout_s=cfg.graceful_shutdown_timeout_s,
        logging_config={"enable_access_log": cfg.access_log},
    )
    @serve.ingress(app)
    class GenorayIngress:
        def __init__(self, model):
            # a module function is pickled by reference, so this sets the real module's registry
            _set_backend(ServeBackend(model, cfg.predict_timeout_s, cfg.retries))

    model = group_model(cfg, replica_options, groups) if groups > 1 else GenorayModel.bind(cfg.root, cfg.poll_s)  # type: ignore[attr-defined]
    return GenorayIngress.bind(model)  # type: ignore[attr-defined]


class BatchedBackend:
    """:class:`~genoray.service.Backend` of a ``GenorayReplica``: its own bundle, concurrent
    requests batched in-process (``@serve.batch``), 504 after ``timeout_s``."""

    def __init__(self, holder, timeout_s: float, max_batch_size: int, batch_wait_timeout_s: float):
        from ray import serve

        self.holder, self.timeout_s = holder, timeout_s
        self._batched = serve.batch(max_batch_size=max_batch_size,
                                    batch_wait_timeout_s=batch_wait_timeout_s)(self._predict_many)

    async def _predict_many(self, requests: list) -> list[dict[str, Any]]:
        return await predict_async(self.holder, requests)

    async def predict(self, req) -> dict[str, Any]:
        """Batch this request with concurrent ones; 504 after ``timeout_s``."""
        from fastapi import HTTPException

        try:
            return await asyncio.wait_for(self._batched(req), self.timeout_s)
        except TimeoutError:
            raise HTTPException(504, f"prediction did not finish within {self.timeout_s:g} s") from None

    async def info(self) -> dict[str, Any] | None:
        """This replica's bundle description."""
        return self.holder.describe()


def _replica_app(cfg: ServeConfig, key_hashes: tuple[str, ...], limits, replica_options: dict):
    """``ingress="haproxy"``: one deployment whose replicas serve the API and hold a bundle."""
    from ray import serve

    from genoray.bundle import BundleHolder
    from genoray.service import create_app

    app = create_app(_IngressBackend(), key_hashes=key_hashes, require_key=cfg.require_key, limits=limits)

    @serve.deployment(**replica_options)
    @serve.ingress(app)
    class GenorayReplica(_BundleReplica):
        def __init__(self):
            self.holder = BundleHolder(cfg.root, poll_s=cfg.poll_s, mmap=cfg.mmap)
            _set_backend(BatchedBackend(self.holder, cfg.predict_timeout_s, cfg.max_batch_size,
                                        cfg.batch_wait_timeout_s))

    return GenorayReplica.bind()  # type: ignore[attr-defined]


class _BundleReplica:
    """What ``GenorayModel`` and ``GenorayReplica`` share: a ``self.holder``
    (:class:`~genoray.bundle.BundleHolder`) that follows ``CURRENT``, a version pin through
    Serve's ``user_config``, and a health check."""

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
        self.holder.check()  # a dead watcher would pin an old bundle forever: Serve replaces us

    def __del__(self):
        holder = getattr(self, "holder", None)
        if holder is not None:
            holder.close()


# The ingress replica's backend. Module-level so that the FastAPI routes (pickled with the app)
# and the deployment class (pickled separately) share it by reference within a replica process.
_BACKEND: dict[str, Any] = {}


def _set_backend(backend) -> None:
    _BACKEND["backend"] = backend


class _IngressBackend:
    async def predict(self, req):
        return await _BACKEND["backend"].predict(req)

    async def info(self):
        return await _BACKEND["backend"].info()


def plain_app(root: str, require_key: bool = False, key_hashes: tuple[str, ...] = (), limits: dict | None = None):
    """The same API as a plain FastAPI app without Serve or batching (benchmark baseline)."""
    from genoray.bundle import BundleHolder
    from genoray.service import ServiceLimits, create_app

    return create_app(LocalBackend(BundleHolder(root)), key_hashes=key_hashes, require_key=require_key,
                      limits=ServiceLimits(**(limits or {})))


def run_service(cfg: ServeConfig) -> None:
    """Serve ``cfg.root``'s CURRENT bundle over HTTP until Ctrl-C or SIGTERM (``genoray serve``).

    Fails before Ray starts when no API key is configured (and ``require_key``) or nothing is
    published yet; starts (or joins) Ray, Serve's HTTP proxy (or HAProxy with
    ``ingress="haproxy"``) and the application, then blocks.
    """
    import signal
    import sys
    import time

    from genoray.service import keys_from_env

    if cfg.require_key and not (cfg.key_hashes or keys_from_env()):  # before Ray starts: seconds, not minutes
        raise ValueError("no API keys configured: set GENORAY_API_KEYS=key1,key2 (comma-separated), "
                         "or pass --no-auth to accept requests without a key (local use only)")
    from genoray.bundle import current_version

    if current_version(cfg.root) is None:
        raise FileNotFoundError(f"{cfg.root}: no CURRENT bundle has been published (genoray publish {cfg.root} "
                                "--index INDEX --head HEAD)")
    from ray import serve

    from genoray.runtime import init_ray

    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: binding {cfg.host}; put a TLS-terminating proxy in front", file=sys.stderr)
    ingress = resolve_ingress(cfg)  # reads the bundle's shard groups once (a GET on object storage)
    if ingress == "haproxy":
        if os.environ.get("RAY_ADDRESS"):
            print("note: the haproxy ingress (default) needs the cluster's Ray processes started with "
                  "genoray.serve.haproxy_env() (see cluster.yaml); otherwise use --ingress proxy", file=sys.stderr)
        for k, v in haproxy_env().items():  # read by Ray's processes at start; explicit settings win
            os.environ.setdefault(k, v)
    init_ray()
    start_http(cfg)
    serve.run(build_app(cfg), name="genoray", route_prefix="/")
    print(f"genoray serving {cfg.root} on http://{cfg.host}:{cfg.port}/v1/predict (ingress {ingress}; "
          "Ctrl-C to stop)", file=sys.stderr)

    def stop(signum, frame):  # SIGTERM (systemd, Kubernetes, timeout) stops cleanly like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()  # Ray itself is stopped by the caller (the CLI's main() removes its temp dir)
