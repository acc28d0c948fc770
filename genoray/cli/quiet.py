"""What the CLI does about Ray around a command: keep Ray's messages that a command-line user cannot act on out of the CLI's stderr (``-v``
shows them): the driver's native (C++) log lines, such as ``core_worker.cc ... max_restarts > 0``
at every embed, Ray Data's progress-bar hint, and Serve's start-up chatter.

Native lines are written by Ray's C++ core straight to file descriptor 2, below Python's
logging, so :class:`NativeStderrFilter` puts a pipe on fd 2 for the duration of a command and
forwards everything except lines shaped like ``[2026-01-01 12:00:00,000 E 123 123] file.cc:42: ...``.
:func:`stop_ray` shuts down a Ray the command started and removes its ``gr-ray-*`` temp dir.
:func:`run_supervised` runs a batch job on a Ray it starts as a child in a session of its own.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from pathlib import Path
from typing import Any, Self

from genoray.cli.exitcodes import note
from genoray.infra.runtime import KEPT_MARKER, supervise

log = logging.getLogger(__name__)
QUIET_LOGGERS = ("ray.data._internal.progress", "ray.serve")
NATIVE_LINE = re.compile(rb"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [IWEF] \d+ \d+\] [\w./-]+\.(?:cc|h):\d+: ")


def quiet_python_loggers() -> None:
    """Raise the level of Ray's chatty Python loggers."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


class NativeStderrFilter:
    """Context manager: drop Ray's native log lines written to fd 2; forward the rest as is
    (partial lines, e.g. ``\\r`` progress bars, are forwarded at once unless they may start one)."""

    def __enter__(self) -> Self:
        sys.stderr.flush()
        self.saved = os.dup(2)
        r, w = os.pipe()
        os.dup2(w, 2)
        os.close(w)
        self.reader = r
        self.thread = threading.Thread(target=self._pump, name="genoray-stderr-filter", daemon=True)
        self.thread.start()
        return self

    def _pump(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self.reader, 65536)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            out = b"".join(line + b"\n" for line in lines if not NATIVE_LINE.match(line))
            if buf and not (buf.startswith(b"[") and len(buf) < 4096):  # cannot be a native line's start
                out, buf = out + buf, b""
            if out:
                os.write(self.saved, out)
        if buf and not NATIVE_LINE.match(buf):
            os.write(self.saved, buf)

    def __exit__(self, *exc) -> None:
        sys.stderr.flush()
        os.dup2(self.saved, 2)  # our end of the pipe closes; the pump drains what is left
        self.thread.join(timeout=2.0)
        if not self.thread.is_alive():
            os.close(self.reader)


def ray_running() -> bool:
    """Whether this process is connected to a Ray (one a command may have started)."""
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


def stop_ray(keep: bool) -> None:
    """Shut down the Ray this command started and remove its temp dir (``gr-ray-*``) unless ``keep``."""
    import shutil

    if not ray_running():
        return
    import ray

    temp = None
    try:
        temp = ray._private.worker._global_node.get_temp_dir_path()  # type: ignore[attr-defined]  # private, hence the guard
    except Exception:
        log.debug("no Ray temp dir found", exc_info=True)
    ray.shutdown()
    if temp and Path(temp).name.startswith("gr-ray-"):
        if keep:
            Path(temp, KEPT_MARKER).touch()  # a later start's sweep of dead sessions' dirs leaves it
            note(f"genoray: kept Ray's temp dir {temp}")
        else:
            shutil.rmtree(temp, ignore_errors=True)


SUPERVISED_CHILD_ENV = "GENORAY_SUPERVISED_CHILD"  # set in the child that run_supervised starts


def runs_ray_job(args: Any) -> bool:
    """Whether the command is a long batch job on a Ray it starts (``embed``, ``index --ray``,
    ``reindex``, ``quickstart``, each without ``--no-ray``) and is not already
    :func:`run_supervised`'s child, nor connected to a Ray."""
    if os.environ.get(SUPERVISED_CHILD_ENV) or ray_running():
        return False
    if args.command == "index":
        return bool(args.ray)
    return args.command in ("embed", "reindex", "quickstart") and not args.no_ray


def run_supervised(args: Any, forced: int) -> int | None:
    """When :func:`runs_ray_job`: run the command line ``args.argv`` again as a child of this
    process, in a session of its own (:func:`~genoray.infra.runtime.supervise`, as ``genoray
    serve`` does), and return its exit status (``forced`` when a second signal killed it); else
    ``None`` (run the command here).

    The signal a service manager, ``timeout`` or a scheduler sends to the process group then
    reaches only this process, which passes it on to the child; the child stops in order (its
    Ray included), where Ray's processes in its process group would otherwise be killed at the
    same moment, and Ray's native handler would abort the driver with a stack dump."""
    if not runs_ray_job(args):
        return None
    rc = supervise([sys.executable, "-m", "genoray.cli", *args.argv], dict(os.environ, **{SUPERVISED_CHILD_ENV: "1"}),
                   forced=forced)
    if rc == forced:
        print(f"genoray {args.command}: killed while stopping (a second signal); what was committed is kept",
              file=sys.stderr)
    return rc
