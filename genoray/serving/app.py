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

A bundle with shard groups (:mod:`genoray.serving.scatter`) adds one ``searcher-<g>``
deployment per group in either topology. With ``ingress="haproxy"`` its ``GenorayReplica``
holds a :class:`~genoray.serving.scatter.GroupHolder` (encoder, head, OOD scorer; no vectors)
and the bound searcher handles, batches its own requests like the one-group replica
(:class:`~genoray.serving.backends.BatchedBackend` over
:func:`~genoray.serving.scatter.predict_groups_async`) and scatters each batch to the groups
(searching in-process those whose files are on its node, ``ServeConfig.local_groups_mb``);
with ``ingress="proxy"`` the ``GenorayModel`` replicas do the same behind the Python proxy.

Batching takes only what is already queued (``batch_wait_timeout_s=0``): a lone request is
answered at once, and while a batch runs the requests that arrive meanwhile queue up and form
the next one, so batches grow with the load without a fixed wait. Replicas memory-map the
index (``mmap``) and declare their memory to Ray (:mod:`genoray.serving.replica_memory`).

The end-to-end request timeout (408) and the bind address are Serve HTTP options
(``start_http``), 127.0.0.1 by default. ``reconfigure`` (Serve ``user_config``) of the model
deployment can pin a version, e.g. for a rollback drill; normally replicas follow ``CURRENT``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from genoray.bundle import BundleManifest, current_bundle, groups_of
from genoray.config import ServeConfig
from genoray.infra.runtime import init_ray, recorded_pids, signal_recorded, supervise
from genoray.serving.backends import BatchedBackend, IngressBackend, ServeBackend, predict_async, set_backend
from genoray.serving.haproxy import PIDS_ENV, fallback_env, haproxy_env, private_dir
from genoray.serving.holder import BundleHolder, BundleReplica
from genoray.serving.replica_memory import replica_actor_options
from genoray.serving.scatter import GroupHolder, group_model, group_searchers, predict_groups_async, running_loop
from genoray.serving.service import PredictRequest, create_app, keys_from_env

log = logging.getLogger(__name__)


INGRESS_MODES = ("auto", "proxy", "haproxy")


def resolve_ingress(cfg: ServeConfig, served: BundleManifest | None) -> str:
    """The topology ``cfg`` runs for the bundle ``served`` (``CURRENT``): ``"auto"`` is HAProxy,
    for a bundle with shard groups too (its replicas then scatter to the searcher deployments;
    measured in ``bench/bench_serve.py --groups 2``, see ``docs/benchmarks.md``)."""
    if cfg.ingress != "auto":
        return cfg.ingress
    return "haproxy"


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
        if served is not None and groups:
            return _group_replica_app(cfg, key_hashes, limits, replica_options, served)
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


def _haproxy_api(cfg: ServeConfig, key_hashes: tuple[str, ...], limits):
    """The API of a replica behind HAProxy (either ``ingress="haproxy"`` app): its client
    addresses come from HAProxy's ``X-Forwarded-For``, trusted with HAProxy's ingress secret."""
    return create_app(IngressBackend(), key_hashes=key_hashes, require_key=cfg.require_key, limits=limits,
                      behind_haproxy=True)


def _replica_app(cfg: ServeConfig, key_hashes: tuple[str, ...], limits, replica_options: dict):
    """``ingress="haproxy"``: one deployment whose replicas serve the API and hold a bundle."""
    from ray import serve

    app = _haproxy_api(cfg, key_hashes, limits)

    @serve.deployment(**replica_options)
    @serve.ingress(app)
    class GenorayReplica(BundleReplica):
        def __init__(self):
            self.holder = BundleHolder(cfg.root, poll_s=cfg.poll_s, mmap=cfg.mmap,
                                       trust_remote_code=cfg.trust_remote_code)
            set_backend(BatchedBackend(self.holder, cfg.predict_timeout_s, cfg.max_batch_size,
                                        cfg.batch_wait_timeout_s))

    return GenorayReplica.bind()  # type: ignore[attr-defined]


def _group_replica_app(cfg: ServeConfig, key_hashes: tuple[str, ...], limits, replica_options: dict,
                       served: BundleManifest):
    """``ingress="haproxy"`` for a shard-grouped bundle: replicas that serve the API, hold the
    encoder and head (:class:`~genoray.serving.scatter.GroupHolder`, no vectors) and scatter
    their own batches to the ``searcher-<g>`` deployments bound to them."""
    from ray import serve

    app = _haproxy_api(cfg, key_hashes, limits)
    model_opts, searchers = group_searchers(cfg, replica_options, served)

    @serve.deployment(**{**replica_options, "ray_actor_options": model_opts})
    @serve.ingress(app)
    class GenorayReplica(BundleReplica):
        def __init__(self, *groups):
            self.holder = GroupHolder(cfg.root, cfg.poll_s, list(groups), cfg.predict_timeout_s, cfg.retries,
                                      cfg.trust_remote_code, running_loop(),  # the constructor runs in its loop
                                      cfg.local_groups_mb)
            set_backend(BatchedBackend(self.holder, cfg.predict_timeout_s, cfg.max_batch_size,
                                        cfg.batch_wait_timeout_s, run=predict_groups_async))

    return GenorayReplica.bind(*searchers)  # type: ignore[attr-defined]


def preflight(cfg: ServeConfig) -> BundleManifest:
    """What ``genoray serve`` checks before Ray starts (seconds, not minutes): an API key is
    configured (unless ``require_key`` is off) and a bundle is published; returns ``CURRENT``'s
    ``bundle.json``."""
    if cfg.require_key and not (cfg.key_hashes or keys_from_env()):
        raise ValueError("no API keys configured: set GENORAY_API_KEYS=key1,key2 (comma-separated), "
                         "or pass --no-auth to accept requests without a key (local use only)")
    served = current_bundle(cfg.root)
    if served is None:
        raise FileNotFoundError(f"{cfg.root}: no CURRENT bundle has been published (genoray publish {cfg.root} "
                                "--index INDEX --head HEAD)")
    return served


SERVICE_CHILD_ENV = "GENORAY_SERVE_CHILD"  # set in the service process that supervise_service starts


def supervise_service(cfg: ServeConfig, argv: list[str], forced: int) -> int:
    """Run ``argv`` (``genoray serve`` again, which then calls :func:`run_service` because
    :data:`SERVICE_CHILD_ENV` is set) as a supervised child and return its exit status
    (:func:`~genoray.infra.runtime.supervise`; ``forced`` after a second signal).

    The child has a session of its own, so the stop signal a service manager sends to this
    process group does not reach Ray's processes or HAProxy before the service has drained; it
    dies with this process, and the first SIGTERM/SIGINT stops it in order. HAProxy processes
    still recorded afterwards are killed and the temp dirs removed. Usage errors
    (:func:`preflight`) are raised here, before anything starts.
    """
    import shutil
    import signal
    import tempfile

    preflight(cfg)
    pids = tempfile.mkdtemp(prefix="gr-haproxy-")

    def cleanup() -> None:
        signal_recorded(pids, "haproxy", signal.SIGKILL)
        shutil.rmtree(pids, ignore_errors=True)

    env = dict(os.environ, **{SERVICE_CHILD_ENV: "1", PIDS_ENV: pids})
    return supervise(argv, env, on_exit=cleanup, forced=forced)


class _Stop(BaseException):
    """Raised in the main thread by the first SIGTERM or SIGINT: stop the service."""


def run_service(cfg: ServeConfig, announce_json: bool = False) -> bool:
    """Serve ``cfg.root``'s CURRENT bundle over HTTP until SIGTERM or SIGINT (``genoray serve``;
    ``announce_json``: also one JSON line on stdout once it answers, ``--json``).

    Fails before Ray starts when no API key is configured (and ``require_key``) or nothing is
    published yet; starts (or joins) Ray, Serve's HTTP proxy (or HAProxy with
    ``ingress="haproxy"``) and the application, then blocks. SIGTERM and SIGINT stop it the same
    way (:func:`_drain`, then ``serve.shutdown()``; the caller stops Ray); further signals
    during the stop are ignored here (``genoray serve``'s supervisor turns a second one into a
    SIGKILL). Returns whether every in-flight request finished within
    ``graceful_shutdown_timeout_s``.
    """
    import json
    import shutil
    import signal
    import sys
    import tempfile
    import time

    served = preflight(cfg)  # read once: topology, shard groups and replica memory come from it
    import ray
    from ray import serve

    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: binding {cfg.host}; put a TLS-terminating proxy in front", file=sys.stderr)
    ingress = resolve_ingress(cfg, served)
    pids_dir = os.environ.get(PIDS_ENV) or tempfile.mkdtemp(prefix="gr-haproxy-")
    own_dir = pids_dir != os.environ.get(PIDS_ENV)
    ports = f"port {cfg.port}"
    if ingress == "haproxy":
        if os.environ.get("RAY_ADDRESS"):
            print("note: the haproxy ingress (default) needs the cluster's Ray processes started with "
                  "genoray.serving.haproxy.haproxy_env() (see cluster.yaml); otherwise use --ingress proxy", file=sys.stderr)
        for k, v in haproxy_env(cfg.stats_port, cfg.metrics_port, pids_dir=pids_dir).items():
            if k in ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT", PIDS_ENV):
                os.environ[k] = v  # the settings (flags) win
            else:
                os.environ.setdefault(k, v)  # read by Ray's processes at start; explicit settings win
        if not os.environ.get("RAY_ADDRESS"):  # this host's own Ray: a backup proxy of its own
            for k, v in fallback_env(cfg.host).items():
                os.environ.setdefault(k, v)
        ports += f", HAProxy stats {cfg.host}:{cfg.stats_port}, metrics {cfg.host}:{cfg.metrics_port}"
    stopping: list[int] = []

    def stop(signum, frame):
        if not stopping:
            stopping.append(signum)
            raise _Stop
        log.warning("signal %d while stopping: ignored (the supervisor forces the exit)", signum)

    signals = (signal.SIGTERM, signal.SIGINT)
    previous = {s: signal.getsignal(s) for s in signals}
    drained = True
    haproxy_run: Path | None = None
    try:
        for s in signals:
            signal.signal(s, stop)
        init_ray()
        for s in signals:  # again: Ray's native handler (a stack dump, then abort) replaced ours
            signal.signal(s, stop)
        if ingress == "haproxy" and not os.environ.get("RAY_ADDRESS"):  # HAProxy runs on this node
            haproxy_run = private_dir() / ray.get_runtime_context().get_node_id()
        log.info("genoray serve: %s", ports)
        start_http(cfg)
        serve.run(build_app(cfg, served), name="genoray", route_prefix="/")
        print(f"genoray serving {cfg.root} on http://{cfg.host}:{cfg.port}/v1/predict (ingress {ingress}; {ports}; "
              "SIGTERM or Ctrl-C to stop)", file=sys.stderr, flush=True)
        if announce_json:  # --json: one line on stdout once it answers, for scripts that start it
            print(json.dumps({"serving": str(cfg.root), "url": f"http://{cfg.host}:{cfg.port}/v1/predict",
                              "ingress": ingress, "ports": ports}), flush=True)
        while True:
            time.sleep(3600)
    except _Stop:
        print(f"genoray serve: {signal.Signals(stopping[0]).name}: draining (up to "
              f"{cfg.graceful_shutdown_timeout_s:g} s)", file=sys.stderr, flush=True)
        drained = _drain(cfg, ingress, pids_dir)
        if not drained:  # cut off what is still in flight at once: the caller's time is up
            signal_recorded(pids_dir, "haproxy", signal.SIGKILL)
        if ray.is_initialized():  # not when the signal came while Ray started: serve.shutdown() would start one
            serve.shutdown()
        print("genoray serve: stopped" + ("" if drained else " (the drain timed out)"), file=sys.stderr, flush=True)
    finally:
        signal_recorded(pids_dir, "haproxy", signal.SIGKILL)  # Serve stopped it; never leave one listening
        for s, h in previous.items():
            signal.signal(s, h)
        if own_dir:
            shutil.rmtree(pids_dir, ignore_errors=True)
        if haproxy_run is not None:  # its config, sockets and logs of this run: nothing serves from them now
            shutil.rmtree(haproxy_run, ignore_errors=True)
            with contextlib.suppress(OSError):
                haproxy_run.parent.rmdir()  # when no other service of this user keeps one there
    return drained


def _drain(cfg: ServeConfig, ingress: str, pids_dir: str) -> bool:
    """Stop accepting and let in-flight requests finish, for up to ``graceful_shutdown_timeout_s``.

    ``ingress="haproxy"``: HAProxy's soft stop (``SIGUSR1``): it closes its listeners (new
    connections are refused), answers what it has in flight with ``Connection: close`` and exits
    when the last one is done; whether that happened in time is the answer. Serve's replicas
    then have nothing left to finish. ``ingress="proxy"``: ``serve.shutdown()`` drains Serve's
    proxy and replicas itself (``graceful_shutdown_timeout_s``)."""
    import signal
    import time

    if ingress != "haproxy":
        return True
    signal_recorded(pids_dir, "haproxy", signal.SIGUSR1)
    deadline = time.monotonic() + cfg.graceful_shutdown_timeout_s
    while recorded_pids(pids_dir, "haproxy"):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True
