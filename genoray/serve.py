"""Ray Serve hosting of the predictor API (:mod:`genoray.service`).

``build_app(ServeConfig)`` returns a Serve application: one deployment whose replicas each hold
a :class:`~genoray.service.BundleHolder` (bundle loaded synchronously in the constructor, then
``CURRENT`` watched and swapped on a background thread) and batch concurrent requests with
``@serve.batch`` on an inner method. Autoscaling, the queue bound (503 when full) and the
per-replica concurrency are deployment options; the request timeout and the bind address are
Serve HTTP options (``start_http``), 127.0.0.1 by default.

``reconfigure`` (Serve ``user_config``) can pin a version, e.g. for a rollback drill; normally
replicas follow ``CURRENT``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)
# The deployment instance of this replica process. Module-level so that the FastAPI routes
# (pickled with the app) and the deployment class (pickled separately) share it by reference.
_LOCAL: dict[str, Any] = {}


def _register(replica) -> None:
    _LOCAL["replica"] = replica


def _holder():
    replica = _LOCAL.get("replica")
    return getattr(replica, "holder", None)


async def _run_predict(req) -> dict[str, Any]:
    return await _LOCAL["replica"].batched(req)


@dataclass(frozen=True)
class ServeConfig:
    """Service settings (CLI: ``genoray serve --help``).

    Attributes:
        root: bundle root (the directory holding ``CURRENT`` and ``versions/``).
        host / port: HTTP bind address (loopback unless you put a TLS proxy in front).
        require_key: refuse requests without a valid ``Authorization: Bearer`` key.
        key_hashes: sha256 digests of the accepted keys (default: from ``GENORAY_API_KEYS``).
        min_replicas / max_replicas / target_ongoing_requests: Serve autoscaling.
        max_ongoing_requests: per replica; >= max_batch_size so batches can fill.
        max_queued_requests: per caller queue bound; beyond it Serve answers 503.
        request_timeout_s: end-to-end timeout at the proxy (408).
        max_batch_size / batch_wait_timeout_s: dynamic batching.
        poll_s: how often replicas check ``CURRENT``.
        num_cpus: logical CPUs per replica (fractional on small hosts).
        limits: see :class:`genoray.service.ServiceLimits` (as a dict).
    """

    root: str
    host: str = "127.0.0.1"
    port: int = 8000
    require_key: bool = True
    key_hashes: tuple[str, ...] = ()
    min_replicas: int = 1
    max_replicas: int = 2
    target_ongoing_requests: float = 16
    max_ongoing_requests: int = 64
    max_queued_requests: int = 256
    request_timeout_s: float = 15.0
    max_batch_size: int = 32
    batch_wait_timeout_s: float = 0.005
    poll_s: float = 2.0
    num_cpus: float = 0.5
    upscale_delay_s: float = 5.0
    downscale_delay_s: float = 60.0
    limits: dict[str, int] = dataclasses.field(default_factory=dict)


def start_http(cfg: ServeConfig) -> None:
    """Start Serve's HTTP proxy on ``cfg.host:cfg.port`` with the request timeout."""
    from ray import serve

    serve.start(http_options={"host": cfg.host, "port": cfg.port, "request_timeout_s": cfg.request_timeout_s})


def build_app(cfg: ServeConfig):
    """The Serve application for ``cfg`` (deploy with ``serve.run(app, route_prefix="/")``)."""
    from ray import serve

    from genoray.service import BundleHolder, PredictRequest, ServiceLimits, create_app, keys_from_env, predict_batch  # noqa: F401

    key_hashes = cfg.key_hashes or keys_from_env()
    limits = ServiceLimits(**cfg.limits)
    app = create_app(_holder, _run_predict, key_hashes=key_hashes, require_key=cfg.require_key, limits=limits)

    @serve.deployment(
        autoscaling_config={
            "min_replicas": cfg.min_replicas, "max_replicas": cfg.max_replicas,
            "target_ongoing_requests": cfg.target_ongoing_requests,
            "upscale_delay_s": cfg.upscale_delay_s, "downscale_delay_s": cfg.downscale_delay_s,
            "metrics_interval_s": 1.0, "look_back_period_s": 5.0,
        },
        max_ongoing_requests=cfg.max_ongoing_requests,
        max_queued_requests=cfg.max_queued_requests,
        ray_actor_options={"num_cpus": cfg.num_cpus},
        health_check_period_s=5,
        health_check_timeout_s=20,
        graceful_shutdown_timeout_s=20,
    )
    @serve.ingress(app)
    class GenorayPredictor:
        def __init__(self, root: str, poll_s: float):
            self.holder = BundleHolder(root, poll_s=poll_s)
            _register(self)  # module function: pickled by reference, so it sets the real registry

        def reconfigure(self, user_config: dict[str, Any]) -> None:
            version = (user_config or {}).get("version")
            if version and version != self.holder.version:
                import threading

                threading.Thread(target=self._load_quietly, args=(version,), daemon=True).start()

        def _load_quietly(self, version: str) -> None:
            try:
                self.holder.load(version)
            except Exception:  # already logged; the current bundle keeps serving
                pass

        @serve.batch(max_batch_size=cfg.max_batch_size, batch_wait_timeout_s=cfg.batch_wait_timeout_s)
        async def batched(self, requests: list[PredictRequest]) -> list[dict[str, Any]]:
            import asyncio

            return await asyncio.get_running_loop().run_in_executor(None, predict_batch, self.holder, requests)

        def check_health(self) -> None:
            if self.holder is None or self.holder.predictor is None:
                raise RuntimeError("no bundle loaded")

        def __del__(self):
            holder = getattr(self, "holder", None)
            if holder is not None:
                holder.close()

    return GenorayPredictor.bind(cfg.root, cfg.poll_s)


def plain_app(root: str, require_key: bool = False, key_hashes: tuple[str, ...] = (), limits: dict | None = None):
    """The same API as a plain FastAPI app without Serve or batching (benchmark baseline)."""
    import asyncio

    from genoray.service import BundleHolder, ServiceLimits, create_app, predict_batch

    holder = BundleHolder(root)

    async def run_predict(req):
        return (await asyncio.get_running_loop().run_in_executor(None, predict_batch, holder, [req]))[0]

    return create_app(lambda: holder, run_predict, key_hashes=key_hashes, require_key=require_key,
                      limits=ServiceLimits(**(limits or {})))
