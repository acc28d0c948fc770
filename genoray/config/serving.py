"""Settings of the predictor's outputs: batch prediction (:class:`PredictConfig`), publishing a
bundle (:class:`PublishConfig`), and the HTTP service (:class:`ServeConfig`, :class:`ServiceLimits`)."""

from __future__ import annotations

import ipaddress
from dataclasses import field
from typing import Literal

from genoray.config.base import config_class, validate


@config_class
class PredictConfig:
    """Batch prediction (``genoray predict``).

    Attributes:
        k: neighbours returned per prediction (``None``: the head's k).
        format: ``jsonl``: one JSON object per query; ``tsv``: one row per query, probabilities
            as ``p_<class>`` columns, neighbours as ``id:label:similarity;...``; ``parquet``: the
            same columns, neighbours as a list of structs.
        with_sequences: give each neighbour its sequence and metadata, read again from the source
            files of the store the index was built from (predictions are held until then).
        trust_remote_code: let the index's transformers model run its own Python code (a warning
            names the model); the value recorded in the index never switches it on.
    """

    k: int | None = None
    format: Literal["jsonl", "tsv", "parquet"] = "jsonl"
    with_sequences: bool = False
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        validate(self, (self.k is None or self.k >= 1, f"k must be >= 1, got {self.k}"))


@config_class
class PublishConfig:
    """How a new bundle version is laid out for serving (``genoray publish``).

    Attributes:
        shard_groups: split the index's shards into this many groups: ``genoray serve`` then runs
            one searcher deployment per group and gathers their answers (``None``: one group,
            every replica holds the whole index).
        group_memory_mb: instead of ``shard_groups``: the fewest groups whose searcher replica
            fits this much memory.
    """

    shard_groups: int | None = None
    group_memory_mb: float | None = None

    def __post_init__(self) -> None:
        validate(self, (self.shard_groups is None or self.shard_groups >= 1, "shard_groups must be >= 1"),
                 (self.group_memory_mb is None or self.group_memory_mb > 0, "group_memory_mb must be > 0"),
                 (self.shard_groups is None or self.group_memory_mb is None,
                  "give shard_groups or group_memory_mb, not both"))


@config_class
class ServiceLimits:
    """Request limits of the HTTP API (:mod:`genoray.serving.service`).

    Attributes:
        max_body_bytes: largest request body (413 beyond).
        max_sequences: sequences per request.
        max_length: longest sequence (bp) accepted in a request.
        max_total_bases: sum of sequence lengths per request.
        max_k: most neighbours a request may ask for.
        rate_per_key: requests/s per API key and ingress replica (token bucket; 429 beyond); 0 = off.
        burst_per_key: token-bucket burst per key.
        failed_keys_per_client: after this many wrong API keys from one client address within
            ``failed_keys_window_s``, that address gets 429 (``Retry-After``), the right key
            included, until the oldest of them is that old (per ingress replica); 0 = off. Behind
            HAProxy the address is the one HAProxy saw (:mod:`genoray.serving.lockout`). Off by
            default: one address is often many clients (a TLS proxy in front, a NAT), and then
            anyone could keep all of them locked out (``docs/security.md``).
        failed_keys_window_s: the window of ``failed_keys_per_client``.
        failed_keys_clients: client addresses remembered (least recently failing forgotten first).
    """

    max_body_bytes: int = 1 << 20
    max_sequences: int = 64
    max_length: int = 10_000
    max_total_bases: int = 200_000
    max_k: int = 100
    rate_per_key: float = 0.0
    burst_per_key: int = 20
    failed_keys_per_client: int = 0
    failed_keys_window_s: float = 60.0
    failed_keys_clients: int = 10_000

    def __post_init__(self) -> None:
        validate(self, (min(self.max_body_bytes, self.max_sequences, self.max_length, self.max_total_bases,
                            self.max_k, self.burst_per_key, self.failed_keys_clients) >= 1,
                        "every limit must be >= 1"),
                 (self.rate_per_key >= 0, f"rate_per_key must be >= 0, got {self.rate_per_key}"),
                 (self.failed_keys_per_client >= 0 and self.failed_keys_window_s > 0,
                  "failed_keys_per_client must be >= 0 and failed_keys_window_s > 0, got "
                  f"{self.failed_keys_per_client}, {self.failed_keys_window_s}"))


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` reaches this machine only (``localhost``, ``127.0.0.0/8``, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost: it may resolve to anything
        return False


@config_class
class ServeConfig:
    """Service settings (CLI: ``genoray serve --help``; see :mod:`genoray.serving.app`).

    Attributes:
        root: bundle root (the directory holding ``CURRENT`` and ``versions/``).
        host / port: HTTP bind address (loopback unless you put a TLS proxy in front).
        stats_port / metrics_port: ``ingress="haproxy"``: HAProxy's stats page and its Prometheus
            exporter, bound to ``host`` too; give each service on a host its own (reported at start).
        require_key: refuse requests without a valid ``Authorization: Bearer`` key.
        allow_public_no_auth: accept ``require_key`` off on a ``host`` that is not loopback
            (refused otherwise: anyone who can reach the port could use the service).
        key_hashes: sha256 digests of the accepted keys (default: from ``GENORAY_API_KEYS``).
        min_replicas / max_replicas / target_ongoing_requests: autoscaling of the replicas that
            hold a bundle (``GenorayModel``; ``GenorayReplica`` with ``ingress="haproxy"``)
            (run >= 2 replicas in production: a request on a replica that dies is retried on another).
        max_ongoing_requests: per model replica; >= max_batch_size so batches can fill.
        max_queued_requests: per caller queue bound; beyond it the answer is 503.
        request_timeout_s: end-to-end timeout at the proxy (408).
        predict_timeout_s: the ingress waits this long for a prediction, retries included (504);
            keep it below ``request_timeout_s`` so callers get the more specific answer.
        retries: attempts on another model replica after the one serving a request died.
        max_batch_size / batch_wait_timeout_s: dynamic batching. The default wait 0 batches
            only what is already queued: no wait when a replica is idle, and batches grow with
            the load (requests arriving during a batch form the next one).
        poll_s: how often replicas check ``CURRENT`` (and refresh their lease on the version they serve).
        num_cpus: logical CPUs per model replica (fractional on small hosts).
        mmap: replicas memory-map the index files and id tables (replicas on a node share one
            copy in the page cache) instead of reading them into their own memory.
        replica_memory_mb: memory each replica that holds a bundle declares to Ray, so Ray
            never packs more of them on a node than fit; 0 = estimated from the ``CURRENT``
            bundle's files (:mod:`genoray.serving.replica_memory`).
        upscale_delay_s / downscale_delay_s: autoscaling delays.
        ingress_replicas / ingress_num_cpus / ingress_max_ongoing_requests: the HTTP ingress
            (auth and validation only; light). ``ingress="proxy"`` only.
        health_check_period_s: Serve calls ``check_health`` this often (fails if the bundle
            watcher stopped, so the replica is replaced).
        graceful_shutdown_timeout_s: on scale-down or shutdown a replica finishes its in-flight
            requests for up to this long; on SIGTERM or SIGINT ``genoray serve`` stops accepting and
            waits this long for in-flight requests before it stops Serve (exit 7 when some were
            still running; see ``docs/operations.md``).
        access_log: Serve's per-request access log lines (proxy and replicas); off saves a log
            write per hop per request (one A/B on 2 cores: 110 -> 131 req/s at 8 clients; within
            run-to-run noise in bench_serve).
        ingress: ``"auto"`` (default: ``"haproxy"``, for a bundle with shard groups too),
            ``"haproxy"`` (HAProxy -> API-and-model replicas, which scatter to the groups'
            searchers when the bundle has shard groups; see :mod:`genoray.serving.app`) or
            ``"proxy"`` (Serve's Python proxy -> ingress -> model replicas). ``"haproxy"`` needs ``genoray.serving.haproxy.haproxy_env()`` in the environment of
            the Ray processes (``genoray serve`` sets it when it starts Ray).
        limits: request limits (:class:`ServiceLimits`; a dict of its fields is accepted).
        local_groups_mb: with shard groups, a replica that holds the encoder and head searches
            in-process (verified, memory-mapped, the same search and merge) the groups whose
            files of the version it serves are already on its node (the node cache; always
            under a local root), in group order while their id rows and the IVF quantizer (the
            memory of its own they take; the mapped files are shared with the node's searchers)
            fit this many MB, and calls the ``searcher-<g>`` deployments only for the others.
            The replica declares that memory to Ray. 0: every group through its searchers.
        trust_remote_code: let the replicas run the bundle's transformers model's own Python
            code (a warning names the model). The operator's decision on this command only: a
            value recorded in the bundle never switches it on.
    """

    root: str
    host: str = "127.0.0.1"
    port: int = 8000
    stats_port: int = 8404
    metrics_port: int = 9101
    require_key: bool = True
    allow_public_no_auth: bool = False
    key_hashes: tuple[str, ...] = ()
    min_replicas: int = 1
    max_replicas: int = 2
    target_ongoing_requests: float = 16
    max_ongoing_requests: int = 64
    max_queued_requests: int = 256
    request_timeout_s: float = 15.0
    predict_timeout_s: float = 10.0
    retries: int = 3
    max_batch_size: int = 32
    batch_wait_timeout_s: float = 0.0
    poll_s: float = 2.0
    num_cpus: float = 0.5
    mmap: bool = True
    replica_memory_mb: float = 0.0
    upscale_delay_s: float = 5.0
    downscale_delay_s: float = 60.0
    ingress_replicas: int = 1
    ingress_num_cpus: float = 0.1
    ingress_max_ongoing_requests: int = 256
    health_check_period_s: float = 5.0
    graceful_shutdown_timeout_s: float = 20.0
    access_log: bool = True
    ingress: Literal["auto", "proxy", "haproxy"] = "auto"
    limits: ServiceLimits = field(default_factory=ServiceLimits)
    local_groups_mb: float = 1024.0
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.limits, dict):  # ServeConfig(limits={"rate_per_key": 2}) as before
            object.__setattr__(self, "limits", ServiceLimits(**self.limits))
        if isinstance(self.key_hashes, list):
            object.__setattr__(self, "key_hashes", tuple(self.key_hashes))
        validate(self,
                 (0 <= self.port <= 65535, f"port must be in 0..65535, got {self.port}"),
                 (1 <= min(self.stats_port, self.metrics_port) and max(self.stats_port, self.metrics_port) <= 65535,
                  f"stats_port and metrics_port must be in 1..65535, got {self.stats_port}, {self.metrics_port}"),
                 (len({self.port, self.stats_port, self.metrics_port}) == 3,
                  f"port, stats_port and metrics_port must differ, got {self.port}, {self.stats_port}, "
                  f"{self.metrics_port}"),
                 (0 <= self.min_replicas <= self.max_replicas and self.max_replicas >= 1,
                  f"need 0 <= min_replicas <= max_replicas >= 1, got {self.min_replicas}, {self.max_replicas}"),
                 (min(self.max_ongoing_requests, self.max_queued_requests, self.max_batch_size,
                      self.ingress_replicas, self.ingress_max_ongoing_requests) >= 1,
                  ("max_ongoing_requests, max_queued_requests, max_batch_size, ingress_replicas and "
                   "ingress_max_ongoing_requests must be >= 1")),
                 (min(self.request_timeout_s, self.predict_timeout_s, self.poll_s, self.health_check_period_s) > 0,
                  "request_timeout_s, predict_timeout_s, poll_s and health_check_period_s must be > 0"),
                 (self.retries >= 0 and self.batch_wait_timeout_s >= 0 and self.num_cpus >= 0
                  and self.replica_memory_mb >= 0 and self.local_groups_mb >= 0
                  and self.ingress_num_cpus >= 0 and self.graceful_shutdown_timeout_s >= 0,
                  ("retries, batch_wait_timeout_s, num_cpus, replica_memory_mb, local_groups_mb, ingress_num_cpus, "
                   "graceful_shutdown_timeout_s must be >= 0")),
                 (isinstance(self.limits, ServiceLimits), "limits must be a ServiceLimits"),
                 (self.require_key or self.allow_public_no_auth or is_loopback(self.host),
                  f"no API key required (--no-auth) on host {self.host}, which is not loopback: anyone who "
                  "can reach the port could use the service. Bind 127.0.0.1 (--host 127.0.0.1), or set keys "
                  "(GENORAY_API_KEYS) and drop --no-auth, or pass --allow-public-no-auth to accept this"))
