"""Test-only: the process behind a replica id that clients see (``X-Genoray-Replica`` is opaque,
:func:`genoray.serving.holder.replica_id`), looked up in Ray's actor table by a driver connected
to the cluster (what an operator with access to Ray can do; a client cannot)."""

from __future__ import annotations


def replica_pid(replica: str) -> int:
    """The pid of the live Serve replica whose id is ``replica`` (Serve names the actor
    ``SERVE_REPLICA::<app>#<deployment>#<id>``); raises ``LookupError`` when none is alive."""
    from ray._private.state import state

    pids = [a["Pid"] for a in state.actor_table(None).values()
            if a["Name"].endswith(f"#{replica}") and a["State"] in ("ALIVE", 2) and a["Pid"]]
    if len(pids) != 1:
        raise LookupError(f"{len(pids)} live Serve replicas with id {replica!r}")
    return int(pids[0])
