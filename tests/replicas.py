"""Test-only: the process behind a replica id that clients see (``X-Genoray-Replica`` is opaque,
:func:`genoray.serving.holder.replica_id`). An operator with access to Ray or to the node can do
this; a client cannot. Two ways, both local to the test host: Ray's actor table (Serve names the
actor ``SERVE_REPLICA::<app>#<deployment>#<id>``) when this process is a driver of that Ray,
otherwise the process that holds the replica's own Serve log file
(``.../serve/replica_<app>_<deployment>_<id>.log``) open, found through ``/proc``. Also the
versions each replica served under load, in an order the client can vouch for
(:func:`replica_sequences`)."""

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


def replica_sequences(results):
    """The versions each replica served, in an order the client can vouch for: two responses of
    different versions whose requests overlapped in time on one replica are left out (a request
    sent earlier can reach the replica later, so their start order is not the order the replica
    served them; CI saw v1 v2 v1 v2 v1 that way). Responses that did not overlap a response of
    another version keep their order, so a replica that really went back and forth still shows it."""
    by_replica: dict = {}
    for r in sorted(results):
        by_replica.setdefault(r[4], []).append(r)
    sequences = {}
    for replica, rs in by_replica.items():
        unclear = set()
        for i, (t0, latency, _, version, _) in enumerate(rs):
            for j in range(i + 1, len(rs)):
                if rs[j][0] >= t0 + latency:
                    break
                if rs[j][3] != version:
                    unclear.update((i, j))
        sequences[replica] = [r[3] for i, r in enumerate(rs) if i not in unclear]
    return sequences
