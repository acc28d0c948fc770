"""The capacity plan against measurements it was not fitted on (issue #28: "the plan within
±25% of measured memory and ±2x of time for every stage at all three sizes").

The plan's constants were fitted on the 1M rows of ``bench/results/growth-1m-4m-*-2026-12-05.json``
(docs/capacity.md, "The refitted plan"); the 4M rows of the same runs are held out, and the
memory of a 250k run of today's code (its times were taken at load 4.5-16). Replanned the way
``bench/bench_growth.py --from-json`` does (the run's own per-core rate, every search at the nprobe
that run's build tuned), every held-out stage run must be within both targets. A constant that
drifts (a start cost, a per-row byte count, a scan rate) or a stage model that stops following the
code shows up here as a named FAIL, without running the hour-long bench."""

import json
from pathlib import Path

import pytest

from bench.bench_growth import plan_ok, replan

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"
IDLE_RUNS = ("growth-1m-4m-clustered-2026-12-05.json", "growth-1m-4m-unclustered-2026-12-05.json")
FITTED_ON = 1_000_000
HELD_OUT = 4_000_000


def replanned(name: str) -> list[dict]:
    """The saved run's results, each annotated with today's plan for it."""
    raw = json.loads((RESULTS / name).read_text())
    return replan(raw["results"], raw["gflops_per_core"], True)


def verdict(r: dict) -> str:
    """PASS / FAIL of one stage run, as the bench's table prints it."""
    return plan_ok(r, r["wall_s"], r.get("private_mb") if r["stage"] == "predict" else r.get("driver_mb"))


@pytest.mark.parametrize("name", IDLE_RUNS)
def test_held_out_4m_within_both_targets(name):
    runs = [r for r in replanned(name) if r["n"] == HELD_OUT and r["stage"] != "store"]  # store: no encoder runs
    assert len(runs) == 7
    fails = [(r["stage"], round(r["wall_s"] / r["plan_s"], 2), r["plan_mb"]) for r in runs if verdict(r) != "PASS"]
    assert not fails, fails


def test_fitted_1m_within_targets_but_the_unmodelled_search_buffers():
    """At 1M every stage run is within both targets except the unclustered predict's private
    memory (214 MiB measured after 10k queries at nprobe 1,536, 146 MiB planned): the plan does not
    model the search's transient coarse-assignment buffers, which the bench reads after the fact."""
    fails = sorted((r["mode"], r["stage"]) for name in IDLE_RUNS for r in replanned(name)
                   if r["n"] == FITTED_ON and r["stage"] != "store" and verdict(r) != "PASS")
    assert fails == [("unclustered", "predict")]


def test_memory_errors_are_small_where_the_plan_models_structures():
    """The memory the plan builds from structure sizes (index codes, id table, gids, sample) is
    within 10% at 4M for the build, publish and predict: a per-row byte count that is off by a
    few bytes a row shows here at 4M rows before it crosses the 25% target."""
    for name in IDLE_RUNS:
        for r in replanned(name):
            if r["n"] == HELD_OUT and r["stage"] in ("index_ray", "index_local", "publish", "predict"):
                mem = r["private_mb"] if r["stage"] == "predict" else r["driver_mb"]
                assert abs(mem / r["plan_mb"] - 1) <= 0.10, (name, r["stage"], mem, r["plan_mb"])


def test_held_out_250k_memory_within_25_percent():
    """The 250k run of today's code (load 4.5-16: its times check nothing about an idle-machine
    plan, its memory does): every measured process within ±25% of the plan, but the unclustered
    prediction's private memory (the search buffers the plan does not model, as at 1M)."""
    off = []
    for r in replanned("growth-250k-refit-2026-12-05.json"):
        if r["stage"] == "store":
            continue
        mem = r["private_mb"] if r["stage"] == "predict" else r["driver_mb"]
        for m, p in ((mem, r["plan_mb"]), (r.get("task_mb"), r["plan_task_mb"])):
            if m and p and abs(p - m) > 0.25 * m:
                off.append((r["mode"], r["stage"]))
    assert off == [("unclustered", "predict")]
