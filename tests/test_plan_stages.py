"""The capacity plan states time, peak memory, disk and bytes moved for every stage of the
pipeline (issue #28 item 3), and they grow with n as the code does: never down, linearly where
the stage is a pass over the rows, and the Ray stages timed on the threads a task really gets."""

import json

import pytest

from genoray.cli import main
from genoray.config import ClusterSpec, IndexConfig
from genoray.embedding.synthetic import write_synthetic_store
from genoray.index import build_index
from genoray.index.capacity import STAGES, estimate, format_plan, planned_nprobe, tuned_probe_fraction
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
    for stage, q in (("embed", "disk_bytes"), ("dedup", "moved_bytes"),
                     ("head", "moved_bytes")):
        assert b[stage][q] == pytest.approx(4 * a[stage][q], rel=1e-6), (stage, q)
    mid = estimate(2_000_000, 64, cluster=CLUSTER).stages
    for stage, q in (("embed", "seconds"), ("dedup", "seconds"), ("transfer", "seconds"), ("publish", "disk_bytes"),
                     ("publish", "seconds")):
        # affine in n (a Ray or process start, a quantizer, a process base + a pass over the rows)
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


def test_every_search_is_priced_at_the_tuned_nprobe():
    """bench_growth's unclustered 250k x 64 vectors tune to nprobe 1024 of 2,048 lists (the
    clustered ones to 8, the plan's default): planned at that fraction, prediction, the head
    fit's searches (bounded by fit_scan_rows), the build's and the reindex's recall tuning each
    cost exactly the per-query formula at their nprobe; nothing else changes."""
    n, d, nlist, per_vec, flops, cpus = 250_000, 64, 2048, 72, 25e9, 2
    cl = ClusterSpec(memory_per_node_mb=64 * 1024, cpus_per_node=cpus, gflops_per_core=25.0)
    base, tuned = (estimate(n, d, cluster=cl, probe_fraction=f).stages for f in (0.0, 0.5))

    def query(p):  # coarse quantizer + p/nlist of the SQ8 codes and ids at 4.5 GB/s (SCAN_GB_S), one thread
        return nlist * d * 2 / flops + p / nlist * n * per_vec / (4.5 * 2**30)

    assert base["index"]["factory"] == "IVF2048,SQ8" and base["index"]["bytes_per_vector"] == per_vec
    assert (base["serve"]["nprobe"], tuned["serve"]["nprobe"]) == (8, 1024)
    assert tuned["serve"]["batch_query_s"] == pytest.approx(query(1024) / cpus, rel=1e-9)
    assert tuned["serve"]["batch_query_s"] / base["serve"]["batch_query_s"] == pytest.approx(query(1024) / query(8))
    # head fit: nprobe lowered to nlist x fit_scan_rows // n = 163; 10,000 OOD + 20,000 validation searches
    assert (base["head"]["fit_nprobe"], tuned["head"]["fit_nprobe"]) == (8, 2048 * 20_000 // n) == (8, 163)
    assert tuned["head"]["search_s"] == pytest.approx(30_000 * query(163) / cpus, rel=1e-9)
    assert tuned["head"]["seconds"] - base["head"]["seconds"] == pytest.approx(30_000 * (query(163) - query(8)) / cpus)
    # the tuning walks 1, 2, 3, 4, 6, 8, ... up to the chosen nprobe, 500 queries at each step, on one thread
    walk = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024]
    extra = 500 * sum(query(p) for p in walk[6:])
    assert tuned["index"]["tune_s"] - base["index"]["tune_s"] == pytest.approx(extra, rel=1e-9)
    assert tuned["reindex"]["seconds"] - base["reindex"]["seconds"] == pytest.approx(extra, rel=1e-9)
    for s in ("embed", "dedup", "publish", "transfer"):
        assert tuned[s] == base[s], s
    for s in STAGES:
        assert tuned[s]["peak_bytes"] == base[s]["peak_bytes"], s


def test_probe_fraction_rounds_up_to_the_tuning_walk():
    assert [planned_nprobe(2048, f) for f in (0.0, 0.5, 0.3, 1 / 2048, 1.0)] == [8, 1024, 768, 1, 2048]
    assert [planned_nprobe(65_536, 0.0), planned_nprobe(4096, 0.1875), planned_nprobe(0, 0.5)] == [256, 768, 0]


def test_plan_index_reads_the_tuned_nprobe(tmp_path, capsys):
    store = write_synthetic_store(tmp_path / "store", 4000, 16, parts=2)
    rep = build_index(store, tmp_path / "index", IndexConfig(index_type="IVF32,Flat", recall_queries=100))
    nprobe = rep.search_params["nprobe"]
    assert tuned_probe_fraction(tmp_path / "index") == nprobe / 32
    capsys.readouterr()
    assert main(["plan", "--index", str(tmp_path / "index"), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert (plan["n"], plan["dim"], plan["factory"]) == (4000, 16, "IVF32,Flat")
    assert plan["stages"]["serve"]["nprobe"] == nprobe
    assert main(["plan", "--index", str(tmp_path / "index"), "--probe-fraction", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stages"]["serve"]["nprobe"] == 32
    # a store planned with the index's tuned fraction (a larger store of the same kind of data)
    assert main(["plan", "--store", str(store), "--index", str(tmp_path / "index"), "--type", "IVF64,Flat",
                 "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert (plan["n"], plan["factory"]) == (4000, "IVF64,Flat")
    assert plan["stages"]["serve"]["nprobe"] == planned_nprobe(64, nprobe / 32) == min(64, 2 * nprobe)  # the walk doubled
