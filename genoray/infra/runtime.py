"""Process set-up shared by jobs and services: starting Ray (in a temp dir short enough for
its sockets, :func:`ray_temp_dir`; the temp dirs of dead sessions are swept,
:func:`sweep_dead_ray_dirs`), tuning the allocator of processes that embed, a read-ahead thread
(``prefetch``) that overlaps reading with the forward pass, and the stop on SIGTERM/SIGINT of a
command (:func:`~genoray.infra.stopping.stop_on_signals`) that runs as a child tied to its parent's lifetime (:func:`supervise`)."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sys
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any

log = logging.getLogger(__name__)

# What Ray appends to its temp dir for its longest socket path: the session dir (the date with
# microseconds and a pid of up to 7 digits), ``sockets/`` and the plasma store's socket, with
# an index when several nodes of one machine share a session (``ray.cluster_utils.Cluster``).
RAY_SOCKET_TAIL = len("/session_2026-01-01_00-00-00_000000_4194304/sockets/plasma_store.99")
SOCKET_PATH_MAX = (103 if sys.platform == "darwin" else 107)  # AF_UNIX's sun_path, less its NUL
SOCKET_MARGIN = 8  # bytes kept free for a longer socket name in a later Ray
SHORT_ROOTS = ("/tmp", "/dev/shm")  # noqa: S108 -- roots for a fresh mkdtemp dir, tried in order
KEPT_MARKER = "genoray-kept"  # in a Ray temp dir kept on purpose (--keep): never swept


def ray_temp_dir(prefix: str = "gr-ray-") -> str:
    """Create a fresh temp dir (``mkdtemp``) for a local Ray whose socket paths fit AF_UNIX.

    Under the temp dir of this process (``TMPDIR``) when Ray's longest socket path under it
    fits, with :data:`SOCKET_MARGIN` to spare; else (the long ``TMPDIR`` of a cluster's scratch
    space) under the first of :data:`SHORT_ROOTS` that is a writable directory, said at INFO.
    Ray opens its mode to all users, as it does for its default ``/tmp/ray``. The caller removes
    it after ``ray.shutdown()`` (the CLI does so for ``gr-ray-*``, :func:`init_ray` when Ray fails
    to start); the dirs of this prefix that a killed process left behind are removed first
    (:func:`sweep_dead_ray_dirs`).

    Raises:
        OSError: no candidate root is short enough and writable; the message names them.
    """
    budget = SOCKET_PATH_MAX - RAY_SOCKET_TAIL - SOCKET_MARGIN
    default = tempfile.gettempdir()
    sweep_dead_ray_dirs(prefix)
    for root in (default, *SHORT_ROOTS):
        # mkdtemp names are prefix + 8 characters
        if len(os.path.join(root, prefix + "x" * 8).encode()) > budget:
            continue
        if not (os.path.isdir(root) and os.access(root, os.W_OK | os.X_OK)):
            continue
        path = tempfile.mkdtemp(prefix=prefix, dir=root)
        if root != default:
            log.info("Ray's temp dir is %s: under TMPDIR=%s Ray's socket paths would exceed %d bytes",
                     path, default, SOCKET_PATH_MAX)
        return path
    raise OSError(f"no temp dir for Ray's sockets: TMPDIR={default} and {', '.join(SHORT_ROOTS)} are too long or "
                  f"not writable (a socket path under them must stay within {SOCKET_PATH_MAX} bytes); "
                  f"set TMPDIR to a writable directory of at most {budget - len(prefix) - 9} characters")


@contextlib.contextmanager
def _keep_stop_handlers() -> Iterator[None]:
    """Put back this process's SIGTERM and SIGINT handlers after ``ray.init``, which replaces them
    (SIGTERM: a native stack dump, then abort) with its own; from the main thread only. A SIGTERM
    that Ray's Python handler turned into ``SystemExit(15)`` during ``ray.init`` is handed to
    this process's handler when it has one (e.g. :func:`~genoray.infra.stopping.stop_on_signals`: :class:`~genoray.infra.stopping.Terminated`)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    except SystemExit as e:
        own = saved[signal.SIGTERM]
        if e.code == signal.SIGTERM and callable(own):
            own(signal.SIGTERM, None)
        raise
    finally:
        for s, h in saved.items():
            if h is not None:
                signal.signal(s, h)


@contextlib.contextmanager
def _loopback() -> Iterator[None]:
    """While a local Ray starts, make it bind its GCS, raylet and workers to 127.0.0.1: Ray
    maps an explicit ``127.0.0.1`` node address to the routable one on Linux, and binds to
    loopback only in its single-host mode (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read by the
    processes it starts and, already imported here, by :mod:`ray._private.ray_constants`)."""
    from ray._private import ray_constants

    key, old_env, old = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"), \
        ray_constants.ENABLE_RAY_CLUSTER
    os.environ[key], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = old
        if old_env is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old_env


def init_ray(num_cpus: int | None = None, object_store_mb: int = 512, quiet: bool | None = None) -> None:
    """Start a local Ray (no dashboard, capped object store, bound to 127.0.0.1 so no other
    host reaches its ports, and with token auth on a random token of this session unless
    ``RAY_AUTH_MODE`` is set) unless one is already running or ``RAY_ADDRESS`` points at a cluster.
    This process's SIGTERM and SIGINT handlers survive ``ray.init`` (Ray's native one dumps a
    stack and aborts; see :func:`~genoray.infra.stopping.stop_on_signals`).

    Args:
        num_cpus: CPUs of a local Ray (default: all).
        object_store_mb: object store size of a local Ray.
        quiet: Ray and Ray Data log at WARNING instead of INFO. ``None`` (default) follows this
            process's logging: quiet unless the root logger shows INFO (the CLI's ``-v``).
    """
    import ray

    if ray.is_initialized():
        return
    if quiet is None:
        quiet = logging.getLogger().getEffectiveLevel() > logging.INFO
    level = logging.WARNING if quiet else logging.INFO
    if os.environ.get("RAY_ADDRESS"):
        with _keep_stop_handlers():
            ray.init(log_to_driver=False, logging_level=level)
    else:
        if "RAY_AUTH_MODE" not in os.environ:  # the person's own setting wins
            # token auth with a token of this session's only: Ray's processes inherit it, a
            # process that does not hold it (another user, another host) is refused
            # (Ray's own switch: sets RAY_AUTH_MODE and refreshes the config `import ray` read)
            from ray._private.authentication.authentication_token_setup import _enable_token_auth

            os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
            _enable_token_auth()
        temp = ray_temp_dir()
        try:
            with _keep_stop_handlers(), _loopback():
                ray.init(num_cpus=num_cpus, include_dashboard=False, object_store_memory=object_store_mb * 2**20,
                         log_to_driver=False, logging_level=level, _temp_dir=temp)
        except BaseException:  # a failed or interrupted start leaves no Ray process and no gr-ray-* behind
            import shutil

            with contextlib.suppress(Exception):
                ray.shutdown()
            shutil.rmtree(temp, ignore_errors=True)
            raise
    import ray.data

    if quiet:  # Ray Data logs every dataset execution at INFO
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = sys.stderr.isatty()


def tune_allocator(mmap_threshold: int = 32 * 2**20, trim_threshold: int = 128 * 2**20) -> bool:
    """Fix glibc malloc's mmap and trim thresholds in a process that embeds (no-op elsewhere).

    With glibc's adaptive defaults the per-batch arrays of a unit (a few MiB each) were
    returned to the OS and faulted in again: 2.1M minor faults and 4 s of system time in an
    11 s run of 4 units; fixed thresholds gave 6.9 s and 14k faults, at the cost of keeping at
    most ``trim_threshold`` bytes of freed heap. Returns whether the settings were applied.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's <malloc.h>
    return bool(mallopt(m_mmap_threshold, mmap_threshold)) and bool(mallopt(m_trim_threshold, trim_threshold))


def prefetch(iterable: Iterable[Any], depth: int) -> Iterable[Any]:
    """Iterate ``iterable`` on a thread, up to ``depth`` items ahead (``0``: no thread).
    An exception in the producer is raised here, at the item where it happened."""
    if depth <= 0:
        yield from iterable
        return
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce():
        try:
            for item in iterable:
                while not stop.is_set():
                    try:
                        q.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((done, None))
        except BaseException as e:  # noqa: BLE001 -- handed to the consumer
            q.put((done, e))

    t = threading.Thread(target=produce, name="genoray-read-ahead", daemon=True)
    t.start()
    try:
        while True:
            item, err = q.get()
            if item is done:
                if err is not None:
                    raise err
                return
            yield item
    finally:
        stop.set()
        t.join(timeout=5)


def die_with_parent(sig: int = 9) -> None:
    """Ask the kernel to send ``sig`` (default SIGKILL) to this process when its parent exits
    (Linux ``prctl(PR_SET_PDEATHSIG)``; a no-op elsewhere). Call it in the child, e.g. as a
    ``preexec_fn``; it survives ``exec``. Exits at once when the parent is already gone."""
    import ctypes

    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, sig, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def supervise(argv: list[str], env: dict[str, str], on_exit=None, forced: int | None = None) -> int:
    """Run ``argv`` as a child in its own session, tied to this process's lifetime, and return
    its exit status (a signal ``n`` becomes ``128 + n``; ``forced``, when given, after a second signal).

    The child's own session keeps the signal a service manager sends to this process group
    (SIGTERM from systemd, Kubernetes, ``docker stop``; SIGINT from Ctrl-C) away from the
    processes the child starts (a local Ray, HAProxy), so the child can stop them in order:
    the first SIGTERM or SIGINT here is passed on to the child (the same signal); a second one
    SIGKILLs the child. The child dies with this process (:func:`die_with_parent`), also when this
    one is SIGKILLed. Once the child has exited, whatever the reason, what is left of its session
    is SIGKILLed (:func:`kill_session`), the Ray temp dirs of dead sessions are removed
    (:func:`sweep_dead_ray_dirs`) and ``on_exit()`` runs (e.g. to kill what the child started
    outside its session).

    A watchdog process (:func:`sweep_session_when_closed`, in a session of its own too) does the
    same as soon as this process is gone, however it ended: processes that outlive their parent
    without ``PR_SET_PDEATHSIG`` (Ray's dashboard and runtime-env agents lived on for minutes
    after a SIGKILL) or that a stop missed.
    """
    import signal
    import subprocess

    signals = (signal.SIGTERM, signal.SIGINT)
    previous = {s: signal.getsignal(s) for s in signals}
    proc = subprocess.Popen(argv, env=env, start_new_session=True, preexec_fn=die_with_parent)
    r, w = os.pipe()  # the watchdog reads until every copy of w is closed: when this process is gone
    subprocess.Popen([sys.executable, "-c", f"from genoray.infra.runtime import sweep_session_when_closed as s; "
                      f"s({r}, {proc.pid})"], pass_fds=(r,), start_new_session=True, stdin=subprocess.DEVNULL,
                     env=env)
    os.close(r)
    os.set_inheritable(w, False)
    received: list[int] = []

    def forward(signum, frame):
        received.append(signum)
        if len(received) == 1:
            proc.send_signal(signum)
        else:
            proc.kill()

    for s in signals:
        signal.signal(s, forward)
    try:
        while True:
            try:
                rc = proc.wait()
                break
            except InterruptedError:  # pragma: no cover -- PEP 475 retries; kept for clarity
                continue
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if proc.returncode is not None:
            kill_session(proc.pid)
            sweep_dead_ray_dirs()
        if on_exit is not None:
            on_exit()
    if forced is not None and len(received) > 1 and rc == -signal.SIGKILL:
        return forced
    return rc if rc >= 0 else 128 - rc


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (one that exited, not yet reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:  # no /proc (macOS): kill(0) is the answer
        return True


def sweep_dead_ray_dirs(prefix: str = "gr-ray-") -> list[str]:
    """Remove the Ray temp dirs (:func:`ray_temp_dir` of ``prefix``) that a killed process left
    behind under ``TMPDIR`` and :data:`SHORT_ROOTS`; returns the removed paths.

    Only directories of this user whose Ray sessions' processes are all gone qualify: Ray names
    each session dir ``session_<date>_<time>_<us>_<pid>`` after the process that started it. A
    dir without a session (just made, Ray starting), with a live starter (a recycled process id
    included) or kept on purpose (:data:`KEPT_MARKER`, ``--keep``) is left alone, so running jobs
    and services of this user are never touched."""
    import shutil

    removed = []
    uid = os.getuid()
    for root in dict.fromkeys((tempfile.gettempdir(), *SHORT_ROOTS)):
        try:
            entries = [e for e in os.scandir(root) if e.name.startswith(prefix)]
        except OSError:
            continue
        for e in entries:
            try:
                if not e.is_dir(follow_symlinks=False) or e.stat(follow_symlinks=False).st_uid != uid:
                    continue
                names = os.listdir(e.path)
                pids = [int(n.rsplit("_", 1)[1]) for n in names if n.startswith("session_2") and
                        n.rsplit("_", 1)[1].isdigit()]
            except OSError:
                continue
            if pids and KEPT_MARKER not in names and not any(pid_alive(p) for p in pids):
                shutil.rmtree(e.path, ignore_errors=True)
                removed.append(e.path)
    if removed:
        log.info("removed the Ray temp dirs of dead sessions: %s", ", ".join(removed))
    return removed


def recorded_pids(directory: str | os.PathLike, name: str) -> list[int]:
    """The live processes recorded in ``directory`` (one empty file per process id, written by
    the process itself, e.g. :mod:`genoray.serving.haproxy`'s wrapper) whose command line
    still contains ``name`` (a recycled process id is left alone)."""
    from pathlib import Path

    out = []
    for f in Path(directory).glob("[0-9]*"):
        try:
            cmdline = Path(f"/proc/{int(f.name)}/cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if name.encode() in cmdline:
            out.append(int(f.name))
    return sorted(out)


def signal_recorded(directory: str | os.PathLike, name: str, sig: int) -> list[int]:
    """Send ``sig`` to the processes :func:`recorded_pids` finds; returns their ids."""
    pids = recorded_pids(directory, name)
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:  # exited meanwhile
            pass
    return pids


def session_pids(sid: int) -> list[int]:
    """The live processes of session ``sid`` (from ``/proc``; zombies left out)."""
    out = []
    for stat in os.scandir("/proc"):
        if not stat.name.isdigit():
            continue
        try:
            with open(f"/proc/{stat.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) == sid and int(stat.name) != os.getpid():
            out.append(int(stat.name))
    return out


def sweep_session_when_closed(fd: int, sid: int, patience_s: float = 5.0) -> None:
    """Block until the pipe ``fd`` is closed (its writer is gone), then SIGKILL every process of
    session ``sid`` until none is left (for up to ``patience_s``) and sweep the Ray temp dirs of
    dead sessions. :func:`supervise`'s watchdog."""
    while os.read(fd, 4096):
        pass
    kill_session(sid, patience_s)
    sweep_dead_ray_dirs()


def kill_session(sid: int, patience_s: float = 5.0) -> None:
    """SIGKILL every process of session ``sid`` until none is left (for up to ``patience_s``)."""
    import signal
    import time

    deadline = time.monotonic() + patience_s
    while (pids := session_pids(sid)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.1)
