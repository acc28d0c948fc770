"""The capacity plan states time, peak memory, disk and bytes moved for every stage of the
pipeline (issue #28 item 3), and they grow with n as the code does: never down, linearly where
the stage is a pass over the rows, and the Ray stages timed on the threads a task really gets."""

import json

import pytest

from genoray.cli import main
from genoray.config import ClusterSpec, IndexConfig
from genoray.index.capacity import STAGES, estimate, format_plan
from genoray.index.stage_costs import QUANTITIES

SIZES = (250_000, 1_000_000, 4_000_000, 16_000_000)
CLUSTER = ClusterSpec(memory_per_node_mb=64 * 1024, cpus_per_node=16)


def test_every_stage_has_all_four_quantities():
    plan = estimate(1_000_000, 64, cluster=CLUSTER)
    assert set(STAGES) == {"embed", "dedup", "index", "head", "publish", "transfer", "serve", "reindex"}
    for s in STAGES:
        st = plan.stages[s]
        for q in QUANTITIES:
            assert isinstance(st[q], (int, float)) and st[q] >= 0, (s, q, st[q])
        assert st["seconds"] > 0 and st["peak_bytes"] > 0 and st["moved_bytes"] > 0, s
        assert st["threads"] >= 1, s
    text = format_plan(plan)
    for s in STAGES:
        assert any(line.startswith(f"{s} ") for line in text.splitlines()), s


def test_plan_json_has_every_stage(capsys):
    capsys.readouterr()
    assert main(["plan", "--n", "200000", "--dim", "64", "--json"]) == 0
    stages = json.loads(capsys.readouterr().out)["stages"]
    for s in STAGES:
        assert all(q in stages[s] for q in QUANTITIES), s


@pytest.mark.parametrize("stage", STAGES)
def test_every_quantity_grows_with_n(stage):
    plans = [estimate(n, 64, cluster=CLUSTER).stages[stage] for n in SIZES]
    for q in QUANTITIES:
        values = [p[q] for p in plans]
        assert values == sorted(values), (stage, q, values)
    assert plans[-1]["seconds"] > plans[0]["seconds"], stage


def test_passes_over_the_rows_are_linear():
    a, b = (estimate(n, 64, cluster=CLUSTER).stages for n in (1_000_000, 4_000_000))
    for stage, q in (("embed", "seconds"), ("embed", "disk_bytes"), ("dedup", "moved_bytes"),
                     ("head", "moved_bytes")):
        assert b[stage][q] == pytest.approx(4 * a[stage][q], rel=1e-6), (stage, q)
    mid = estimate(2_000_000, 64, cluster=CLUSTER).stages
    for stage, q in (("dedup", "seconds"), ("transfer", "seconds"), ("publish", "disk_bytes"),
                     ("publish", "seconds")):
        # affine in n (a process start, a quantizer, a process base + a pass over the rows)
        assert b[stage][q] - a[stage][q] == pytest.approx(3 * (mid[stage][q] - a[stage][q]), rel=0.05), (stage, q)
    assert b["head"]["seconds"] <= 4 * a["head"]["seconds"]  # a bounded sample: at most linear
    assert b["dedup"]["peak_bytes"] == a["dedup"]["peak_bytes"]  # verification streams: flat in n


def test_ray_tasks_are_timed_on_their_own_threads():
    """A Ray task gets max(1, int(add_cpus)) FAISS threads whatever the node has: the quantizer
    training (one task) takes as long on a 64-core node as on a 2-core one."""
    small, big = (estimate(4_000_000, 64, IndexConfig(add_cpus=0.5), ClusterSpec(memory_per_node_mb=64 * 1024,
                                                                                 cpus_per_node=c)).stages["index"]
                  for c in (2, 64))
    assert small["task_threads"] == big["task_threads"] == 1
    assert small["train_s"] == pytest.approx(big["train_s"])
    assert big["add_s"] < small["add_s"]  # partitions run in parallel across the cores
