"""Ray Serve hosting of the predictor API (:mod:`genoray.serving.service`).

``build_app(ServeConfig)`` returns a Serve application of two deployments:

* ``GenorayModel``: the replicas that do the work. Each holds a
  :class:`~genoray.serving.holder.BundleHolder` (bundle loaded synchronously in the constructor, then
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
environment of its processes, so it must be set before Ray starts (:func:`~genoray.serving.haproxy.haproxy_env`; the
CLI does it; on a cluster, in ``cluster.yaml``), and :mod:`genoray.serving.haproxy` binds HAProxy's
stats and metrics listeners to the service's host.

Batching takes only what is already queued (``batch_wait_timeout_s=0``): a lone request is
answered at once, and while a batch runs the requests that arrive meanwhile queue up and form
the next one, so batches grow with the load without a fixed wait. Replicas memory-map the
index (``mmap``) and declare their memory to Ray (:mod:`genoray.serving.replica_memory`).

The end-to-end request timeout (408) and the bind address are Serve HTTP options
(``start_http``), 127.0.0.1 by default. ``reconfigure`` (Serve ``user_config``) of the model
deployment can pin a version, e.g. for a rollback drill; normally replicas follow ``CURRENT``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from genoray.bundle import BundleManifest, current_bundle, groups_of
from genoray.config import ServeConfig
from genoray.infra.runtime import init_ray
from genoray.serving.backends import BatchedBackend, IngressBackend, ServeBackend, predict_async, set_backend
from genoray.serving.haproxy import haproxy_env
from genoray.serving.holder import BundleHolder, BundleReplica
from genoray.serving.replica_memory import replica_actor_options
from genoray.serving.scatter import group_model
from genoray.serving.service import PredictRequest, create_app, keys_from_env

log = logging.getLogger(__name__)


INGRESS_MODES = ("auto", "proxy", "haproxy")


def resolve_ingress(cfg: ServeConfig, served: BundleManifest | None) -> str:
    """The topology ``cfg`` runs for the bundle ``served`` (``CURRENT``): ``"auto"`` is HAProxy
    for a bundle of one shard group and the proxy topology for a grouped one (searcher
    deployments sit behind the model replicas)."""
    if cfg.ingress != "auto":
        return cfg.ingress
    return "proxy" if served is not None and groups_of(served) else "haproxy"


def start_http(cfg: ServeConfig) -> None:
    """Start Serve's HTTP proxy on ``cfg.host:cfg.port`` with the request timeout."""
    from ray import serve

    serve.start(http_options={"host": cfg.host, "port": cfg.port, "request_timeout_s": cfg.request_timeout_s},
                logging_config={"enable_access_log": cfg.access_log})


def build_app(cfg: ServeConfig, served: BundleManifest | None = None):
    """The Serve application for ``cfg`` (deploy with ``serve.run(app, route_prefix="/")``);
    ``served``: ``bundle.json`` of ``CURRENT`` when the caller read it already (read once here
    otherwise: the topology, the shard groups and the replicas' memory all come from it)."""
    from ray import serve

    served = served if served is not None else current_bundle(cfg.root)
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
        ray_actor_options=replica_actor_options(cfg, served),
        health_check_period_s=cfg.health_check_period_s,
        health_check_timeout_s=20,
        graceful_shutdown_timeout_s=cfg.graceful_shutdown_timeout_s,
        logging_config={"enable_access_log": cfg.access_log},
    )

    groups = groups_of(served) if served is not None else None  # a searcher deployment each (genoray.serving.scatter)
    if resolve_ingress(cfg, served) == "haproxy":
        if groups:
            raise ValueError(f"{cfg.root}: the bundle has {len(groups)} shard groups; serve it with ingress='proxy' "
                             "or 'auto'")
        return _replica_app(cfg, key_hashes, limits, replica_options)

    @serve.deployment(**replica_options)
    class GenorayModel(BundleReplica):
        def __init__(self, root: str, poll_s: float):
            self.holder = BundleHolder(root, poll_s=poll_s, mmap=cfg.mmap, trust_remote_code=cfg.trust_remote_code)

        @serve.batch(max_batch_size=cfg.max_batch_size, batch_wait_timeout_s=cfg.batch_wait_timeout_s)
        async def predict(self, requests: list[PredictRequest]) -> list[dict[str, Any]]:
            return await predict_async(self.holder, requests)

        def info(self) -> dict[str, Any]:
            return self.holder.describe()

    app = create_app(IngressBackend(), key_hashes=key_hashes, require_key=cfg.require_key, limits=limits)

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
            set_backend(ServeBackend(model, cfg.predict_timeout_s, cfg.retries))

    model = group_model(cfg, replica_options, served) if served is not None and groups \
        else GenorayModel.bind(cfg.root, cfg.poll_s)  # type: ignore[attr-defined]
    return GenorayIngress.bind(model)  # type: ignore[attr-defined]


def _replica_app(cfg: ServeConfig, key_hashes: tuple[str, ...], limits, replica_options: dict):
    """``ingress="haproxy"``: one deployment whose replicas serve the API and hold a bundle."""
    from ray import serve

    app = create_app(IngressBackend(), key_hashes=key_hashes, require_key=cfg.require_key, limits=limits)

    @serve.deployment(**replica_options)
    @serve.ingress(app)
    class GenorayReplica(BundleReplica):
        def __init__(self):
            self.holder = BundleHolder(cfg.root, poll_s=cfg.poll_s, mmap=cfg.mmap,
                                       trust_remote_code=cfg.trust_remote_code)
            set_backend(BatchedBackend(self.holder, cfg.predict_timeout_s, cfg.max_batch_size,
                                        cfg.batch_wait_timeout_s))

    return GenorayReplica.bind()  # type: ignore[attr-defined]


def run_service(cfg: ServeConfig) -> None:
    """Serve ``cfg.root``'s CURRENT bundle over HTTP until Ctrl-C or SIGTERM (``genoray serve``).

    Fails before Ray starts when no API key is configured (and ``require_key``) or nothing is
    published yet; starts (or joins) Ray, Serve's HTTP proxy (or HAProxy with
    ``ingress="haproxy"``) and the application, then blocks.
    """
    import signal
    import sys
    import time

    if cfg.require_key and not (cfg.key_hashes or keys_from_env()):  # before Ray starts: seconds, not minutes
        raise ValueError("no API keys configured: set GENORAY_API_KEYS=key1,key2 (comma-separated), "
                         "or pass --no-auth to accept requests without a key (local use only)")

    served = current_bundle(cfg.root)  # read once: topology, shard groups and replica memory come from it
    if served is None:
        raise FileNotFoundError(f"{cfg.root}: no CURRENT bundle has been published (genoray publish {cfg.root} "
                                "--index INDEX --head HEAD)")
    from ray import serve

    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: binding {cfg.host}; put a TLS-terminating proxy in front", file=sys.stderr)
    ingress = resolve_ingress(cfg, served)
    if ingress == "haproxy":
        if os.environ.get("RAY_ADDRESS"):
            print("note: the haproxy ingress (default) needs the cluster's Ray processes started with "
                  "genoray.serving.haproxy.haproxy_env() (see cluster.yaml); otherwise use --ingress proxy", file=sys.stderr)
        for k, v in haproxy_env().items():  # read by Ray's processes at start; explicit settings win
            os.environ.setdefault(k, v)
    init_ray()
    start_http(cfg)
    serve.run(build_app(cfg, served), name="genoray", route_prefix="/")
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
