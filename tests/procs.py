"""Stopping a test's child process the way an operator would: SIGTERM, wait, then SIGKILL."""

from __future__ import annotations

import signal
import subprocess


def stop(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM ``proc`` (``genoray serve`` stops Serve, HAProxy and Ray on it) and wait up to
    ``timeout`` seconds; SIGKILL it when it has not exited by then."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
