"""`genoray plan` and `genoray index` choose the same index for the same input and flags: the
plan reads the same IndexConfig with the same defaults (it used to default the codes' budget to
half the cluster's memory, so at 100M x 768 it showed SQ8 where the build picked PQ32)."""

import itertools
import json

import pytest

from genoray.cli import main
from genoray.embedding.synthetic import write_synthetic_store
from genoray.index import read_manifest


def _plan(capsys, *args: str) -> dict:
    capsys.readouterr()
    assert main(["plan", *args, "--json"]) in (0, 4)  # 4: does not fit; the factory is still chosen
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(("n", "d", "flags", "kind"), [
    (3_000, 16, [], "Flat"),
    (3_000, 16, ["--flat-threshold", "1000"], "IVF"),
    (3_000, 16, ["--type", "IVF64,Flat"], "IVF64,Flat"),
])
def test_plan_of_a_store_names_the_index_the_build_makes(tmp_path, capsys, n, d, flags, kind):
    store = write_synthetic_store(tmp_path / "store", n, d, parts=2)
    planned = _plan(capsys, "--store", str(store), *flags)["factory"]
    assert main(["index", str(store), "--out", str(tmp_path / "index"), *flags]) == 0
    built = read_manifest(tmp_path / "index").factory
    assert planned == built
    assert built.startswith(kind)  # PQ (a real PQ build takes minutes here): the grid below


def test_plan_defaults_are_the_builds_over_a_grid(capsys):
    from genoray.cli.args import INDEX
    from genoray.cli.commands import build_parser
    from genoray.cli.flags import build
    from genoray.index import choose_factory

    kinds = set()
    for n, d, budget in itertools.product([5_000, 10**6, 10**8, 10**9], [64, 256, 768], [None, 64, 524_288]):
        flags = ["--n", str(n), "--dim", str(d), "--nodes", "16", "--memory-per-node-mb", "65536"]
        index_flags = [] if budget is None else ["--memory-budget-mb", str(budget)]
        planned = _plan(capsys, *flags, *index_flags)["factory"]
        cfg = build(build_parser().parse_args(["index", "STORE", "--out", "I", *index_flags]), INDEX)
        assert planned == choose_factory(n, d, cfg), (n, d, budget)
        kinds.add(planned.split(",")[-1][:2])
    assert {"Fl", "SQ", "PQ"} <= kinds  # the grid reaches every kind of index
