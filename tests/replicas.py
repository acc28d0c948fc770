"""Test-only: the process behind a replica id that clients see (``X-Genoray-Replica`` is opaque,
:func:`genoray.serving.holder.replica_id`). An operator with access to Ray or to the node can do
this; a client cannot. Two ways, both local to the test host: Ray's actor table (Serve names the
actor ``SERVE_REPLICA::<app>#<deployment>#<id>``) when this process is a driver of that Ray,
otherwise the process that holds the replica's own Serve log file
(``.../serve/replica_<app>_<deployment>_<id>.log``) open, found through ``/proc``."""

from __future__ import annotations

import os


def _from_actor_table(replica: str) -> list[int]:
    import ray

    if not ray.is_initialized():
        return []
    from ray._private.state import state

    return [int(a["Pid"]) for a in state.actor_table(None).values()
            if a["Name"].endswith(f"#{replica}") and a["State"] in ("ALIVE", 2) and a["Pid"]]


def _from_open_log(replica: str) -> list[int]:
    suffix = f"_{replica}.log"
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:  # gone, or not ours
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            name = os.path.basename(target)
            if name.startswith("replica_") and name.endswith(suffix) and "/serve/" in target:
                pids.append(int(pid))
                break
    return pids


def replica_pid(replica: str) -> int:
    """The pid of the live Serve replica whose id is ``replica``; raises ``LookupError`` when
    there is not exactly one."""
    pids = _from_actor_table(replica) or _from_open_log(replica)
    if len(pids) != 1:
        raise LookupError(f"{len(pids)} live Serve replicas with id {replica!r}")
    return pids[0]
