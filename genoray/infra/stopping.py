"""Stopping a batch command on SIGTERM or SIGINT: the signal becomes an exception in the main
thread (:func:`stop_on_signals`), so ``finally`` blocks stop the work in order, and a stop whose
exception Python dropped (in a ``__del__``) is raised again between stages (:func:`raise_if_stopped`)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class Terminated(BaseException):  # noqa: N818 -- named like KeyboardInterrupt, its sibling
    """Raised in the main thread by the first SIGTERM under :func:`stop_on_signals` (a
    ``BaseException``, like ``KeyboardInterrupt``, so no ``except Exception`` swallows it)."""


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` and SIGINT into ``KeyboardInterrupt``, raised in the
    main thread wherever it is, so that ``finally`` blocks stop the work in order (stop
    submitting, shut Ray down, remove temp dirs) instead of the process dying at once, or
    aborting in Ray's native handler. :func:`init_ray` keeps this handler. A second signal
    interrupts the stop itself, as a second Ctrl-C does (:func:`supervise` SIGKILLs its child
    instead); a Ray temp dir it leaves is swept by the next start. A no-op off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        STOPPED.append(signum)
        raise Terminated(signum) if signum == signal.SIGTERM else KeyboardInterrupt

    signals = (signal.SIGTERM, signal.SIGINT)
    previous = {s: signal.getsignal(s) for s in signals}
    STOPPED.clear()
    for s in signals:
        signal.signal(s, stop)  # SIGINT too: a child started where SIGINT was ignored (``cmd &``) inherits that
    try:
        yield
        raise_if_stopped()
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


STOPPED: list[int] = []  # the signals stop_on_signals received


def raise_if_stopped() -> None:
    """Raise again the stop a signal asked for if its exception was swallowed: one that lands in
    a ``__del__`` (Ray Data's iterator shuts its executor down there) is printed and dropped by
    Python. Called between stages and when :func:`stop_on_signals` ends, so the job still stops."""
    if STOPPED:
        raise Terminated(STOPPED[0]) if STOPPED[0] == signal.SIGTERM else KeyboardInterrupt
