"""The command line: flags generated from the config dataclasses, exit codes, output formats."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from genoray import config as C
from genoray.cli import args as cli_args
from genoray.cli import commands as cli
from genoray.cli import exitcodes
from genoray.cli.flags import leaves

# what each command needs besides flags (positionals, required options)
REQUIRED = {
    "quickstart": [],
    "embed": ["in.fa", "--out", "o"],
    "index": ["store", "--out", "o"],
    "plan": ["--n", "1000", "--dim", "8"],
    "train": ["store", "--index", "i", "--out", "o"],
    "evaluate": ["store"],
    "predict": ["in.fa", "--index", "i", "--head", "h"],
    "publish": ["root"],
    "reindex": ["in.fa", "--work", "w", "--bundles", "b"],
    "serve": ["root"],
    "shift": ["a", "b"],
}
STAGE_CONFIGS = (C.CleanPolicy, C.ReadConfig, C.EncoderChoice, C.KmerConfig, C.PositionConfig, C.HFConfig,
                 C.EmbedConfig, C.IndexConfig, C.ClusterSpec, C.PlanConfig, C.HeadConfig, C.EvaluateConfig,
                 C.PredictConfig, C.PublishConfig, C.ReindexConfig, C.ServeConfig, C.ServiceLimits, C.ShiftConfig,
                 C.ShiftSelection)
# fields set by the command itself rather than by a flag of their own
SET_BY_COMMAND = {(C.ServeConfig, "root"): "positional ROOT", (C.HFConfig, "model"): "--encoder hf:<model>",
                  (C.KmerConfig, "position"): "--encoder kmer-pos",
                  (C.ReadConfig, "split_cutoffs"): "computed by embed_sequences",
                  (C.ReindexConfig, "eval_split"): "--test-split (ReadConfig)"}


def _subparsers():
    parser = cli.build_parser()
    return next(a for a in parser._actions if a.dest == "command").choices


def _flag_fields() -> set[tuple[type, str]]:
    """(owner class, field name) of every field that some command exposes as a flag."""
    dests = {a.dest for sp in _subparsers().values() for a in sp._actions}
    out = set()
    for groups in cli_args.COMMAND_GROUPS.values():
        for g in groups:
            for path, f, owner, _tp, _opt, _d in leaves(g.cls):
                if f"{g.key}.{path}" in dests:
                    out.add((owner, f.name))
    return out


def test_every_stage_config_field_has_a_flag():
    exposed = _flag_fields()
    missing = [f"{cls.__name__}.{f.name}" for cls in STAGE_CONFIGS for f in dataclasses.fields(cls)
               if (cls, f.name) not in exposed and (cls, f.name) not in SET_BY_COMMAND
               and not dataclasses.is_dataclass(f.type if isinstance(f.type, type) else object)
               and f.name not in ("clean", "limits", "index", "head", "embed", "cluster")]
    assert missing == []


def test_every_flag_default_is_its_config_field_default():
    """A flag either belongs to a config field, whose default it shows and parses to, or is one
    of the few that are not settings (paths, inputs, output modes: ``CLI_ONLY``)."""
    groups = {g.key: g for gs in cli_args.COMMAND_GROUPS.values() for g in gs}
    for command, sp in _subparsers().items():
        for action in sp._actions:
            if not action.option_strings:  # a positional: the command's input
                continue
            key, _, path = action.dest.partition(".")
            if not path:
                assert action.dest in cli_args.CLI_ONLY, f"genoray {command} {action.option_strings}: not from a config"
                continue
            field_default = {p: d for p, *_rest, d in leaves(groups[key].cls)}[path]
            assert action.default == field_default, (command, action.option_strings, action.default, field_default)


@pytest.mark.parametrize("command", sorted(cli_args.COMMAND_GROUPS))
def test_parsed_defaults_equal_dataclass_defaults(command):
    from genoray.cli.flags import build

    args = cli.build_parser().parse_args([command, *REQUIRED[command]])
    for g in cli_args.COMMAND_GROUPS[command]:
        fixed = {"root": "root"} if g.cls is C.ServeConfig else {"model": "m"} if g.cls is C.HFConfig else {}
        expected = g.cls(**fixed)
        if g.cls is C.PlanConfig:  # --n 1000 --dim 8 are what plan needs
            expected = C.PlanConfig(n=1000, dim=8)
        assert build(args, g, **fixed) == expected, (command, g.cls.__name__)


def test_flags_reach_nested_and_renamed_fields():
    from genoray.cli.flags import build

    p = cli.build_parser()
    a = p.parse_args(["embed", "x.fa", "--out", "o", "--sequence-column", "seq", "--id-column", "name",
                      "--max-n-fraction", "0.3", "--min-length", "5", "--max-length", "900", "--ambiguous", "reject",
                      "--canonical", "--ks", "2,3", "--no-gc", "--read-batch-size", "7", "--batch-size", "11",
                      "--pos-window", "80", "--label-column", "none"])
    read = build(a, cli_args.READ)
    assert read.sequence_column == "seq" and read.id_column == "name" and read.label_column is None
    assert read.batch_size == 7 and build(a, cli_args.EMBED).batch_size == 11
    assert read.clean == C.CleanPolicy(max_n_fraction=0.3, min_length=5, max_length=900, ambiguous="reject")
    assert build(a, cli_args.KMER) == C.KmerConfig(ks=(2, 3), canonical=True, gc=False)
    enc = cli._encoder(a, "kmer-pos")
    assert enc.config.position == C.PositionConfig(window=80) and enc.config.canonical
    assert cli._encoder(a, "kmer").config.position is None

    # the old flag names still work
    a = p.parse_args(["index", "s", "--out", "o", "--split", "all", "--type", "Flat", "--target-recall", "0.9"])
    assert build(a, cli_args.INDEX) == C.IndexConfig(split=None, index_type="Flat", target_recall=0.9)
    a = p.parse_args(["train", "s", "--index", "i", "--out", "o", "--k", "5", "--C", "0.5"])
    assert build(a, cli_args.HEAD) == C.HeadConfig(k=5, C=0.5)
    a = p.parse_args(["serve", "r", "--no-auth", "--no-access-log", "--ingress", "haproxy", "--rate-per-key", "2"])
    cfg = build(a, cli_args.SERVE, root="r")
    assert not cfg.require_key and not cfg.access_log and cfg.ingress == "haproxy"
    assert cfg.limits == C.ServiceLimits(rate_per_key=2.0)
    a = p.parse_args(["reindex", "x", "--work", "w", "--bundles", "b", "--recall-floor", "0.8", "--head-seed", "3",
                      "--train-split", "dev"])
    cfg = build(a, cli_args.REINDEX)
    assert cfg.recall_floor == 0.8 and cfg.head.seed == 3 and cfg.index.seed == 0
    assert build(a, cli_args.READ).train_split == "dev"  # the data's splits: the index split follows
    a = p.parse_args(["plan", "--n", "5", "--dim", "4", "--memory-per-node-mb", "8192", "--nodes", "3"])
    assert build(a, cli_args.PLAN).cluster == C.ClusterSpec(nodes=3, memory_per_node_mb=8192.0)
    a = p.parse_args(["evaluate", "s", "--split", "all", "--bootstrap", "0"])
    assert build(a, cli_args.EVALUATE) == C.EvaluateConfig(split=None, bootstrap=0)


def test_bad_flag_values_fail_with_the_config_message(capsys):
    assert cli.main(["index", "s", "--out", "o", "--target-recall", "1.5"]) == 2
    assert "target_recall must be in (0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["serve", "r", "--ingress", "bogus"])
    assert e.value.code == 2


def test_configs_validate_and_parse_from_dicts():
    with pytest.raises(ValueError, match="ingress must be"):
        C.ServeConfig(root="r", ingress="nginx")
    with pytest.raises(ValueError, match="k must be >= 1"):
        C.HeadConfig(k=0)
    with pytest.raises(ValueError, match="ood_quantile"):
        C.ShiftConfig(ood_quantile=1.5)
    with pytest.raises(ValueError, match="unknown keys"):
        C.parse(C.ReindexConfig, {"index": {"bogus": 1}})
    cfg = C.parse(C.ServeConfig, {"root": "r", "limits": {"max_k": 5}, "key_hashes": ["a", "b"]})
    assert cfg.limits.max_k == 5 and cfg.key_hashes == ("a", "b")
    assert C.ServeConfig(root="r", limits={"max_k": 5}).limits == C.ServiceLimits(max_k=5)  # the old dict form
    assert C.parse(C.KmerConfig, {"ks": [1, 2], "position": {"ks": [1]}}) == C.KmerConfig(ks=(1, 2), position=C.PositionConfig(ks=(1,)))
    with pytest.raises(ValueError, match="clean.ambiguous: .*'to_n' or 'reject'"):
        C.parse(C.ReadConfig, {"clean": {"ambiguous": "keep"}})


def test_the_public_names_of_the_package_resolve():
    import genoray

    assert {n: getattr(genoray, n).__module__.split(".")[1] for n in ("Predictor", "build_index", "ServeConfig")} == \
        {"Predictor": "predict", "build_index": "index", "ServeConfig": "config"}
    assert all(getattr(genoray, n) is not None for n in genoray.__all__)

def toy_table(path, n=80, splits=True, labels=("at", "gc"), seed=0, lengths=None):
    """Parquet with two separable classes (AT-rich vs GC-rich); every 5th row is test."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    rows = {"id": [], "sequence": [], "label": []}
    if splits:
        rows["split"] = []
    for i in range(n):
        label = labels[i % len(labels)]
        alphabet = list("GGCCAT") if label == "gc" else list("AATTGC")
        length = lengths(i) if lengths else 60
        rows["id"].append(f"s{i}")
        rows["sequence"].append("".join(rng.choice(alphabet, size=length)))
        rows["label"].append(label)
        if splits:
            rows["split"].append("test" if i % 5 == 0 else "train")
    pq.write_table(pa.table(rows), path)
    return path


def run(capsys, *argv):
    """``genoray ARGV`` in-process: (exit status, stdout, stderr)."""
    rc = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def strict_loads(text):
    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")

    return __import__("json").loads(text, parse_constant=refuse)


# ---- exit codes (issue 16 item 2) --------------------------------------------------------------

def test_nothing_written_is_exit_6_with_one_clear_line(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    prot = tmp_path / "prot.fa"
    prot.write_text(">p1\nMKVLAAGIVGLLLAQWERTY\n>p2\nMSTNPKPQRKTKRNTNRRPQ\n")
    empty = tmp_path / "empty.fa"
    empty.write_text("")
    noseq = tmp_path / "noseq.parquet"
    pq.write_table(pa.table({"id": ["a"], "seq": ["ACGT"]}), noseq)
    for f, why in [(prot, "all 2 records were rejected: invalid_character 2 (protein"),
                   (empty, "empty.fa: no records"), (noseq, "every input file failed; first: ")]:
        rc, out, err = run(capsys, "embed", f, "--out", tmp_path / f"s_{f.name}", "--no-ray")
        assert rc == exitcodes.EXIT_EMPTY == 6, (f, err)
        last = err.strip().splitlines()[-1]
        assert last.startswith("genoray embed: nothing written: ") and why in last
        assert strict_loads(out)["written"] == 0
        assert strict_loads(out)["outcome"] == ("failed" if f == noseq else "empty")
    rc, out, err = run(capsys, "embed", prot, "--out", tmp_path / "s_ok", "--no-ray", "--allow-empty")
    assert rc == 0 and "warning: nothing written" in err
    tables = strict_loads(out)["rejects_tables"]  # the summary names the rejects table
    import pyarrow.parquet as pq2

    assert len(tables) == 1 and pq2.read_table(tables[0]).num_rows == 2
    # partial: one good file and one bad file -> 3; both bad -> 6
    good = toy_table(tmp_path / "good.parquet")
    rc, out, _ = run(capsys, "embed", good, noseq, "--out", tmp_path / "s_part", "--no-ray")
    assert rc == exitcodes.EXIT_PARTIAL == 3 and strict_loads(out)["written"] == 80
    assert strict_loads(out)["outcome"] == "partial"


def test_broken_invariant_and_unexpected_errors_are_bugs_not_user_errors(tmp_path, capsys, monkeypatch):
    import genoray.index
    from genoray.infra.errors import InvariantError

    def broken(*a, **k):
        raise InvariantError("record counts do not add up")

    monkeypatch.setattr(genoray.index, "build_index", broken)
    rc, _, err = run(capsys, "index", tmp_path, "--out", tmp_path / "i")
    assert rc == exitcodes.EXIT_BUG == 70 and "internal error (a bug in genoray" in err

    def typo(*a, **k):
        return {}["missing"]

    monkeypatch.setattr(genoray.index, "build_index", typo)
    rc, _, err = run(capsys, "index", tmp_path, "--out", tmp_path / "i")
    assert rc == 70 and "KeyError" in err
    rc, _, err = run(capsys, "index", tmp_path / "nope", "--out", tmp_path / "i2")
    monkeypatch.undo()
    rc, _, err = run(capsys, "index", tmp_path / "nope", "--out", tmp_path / "i2")
    assert rc == 2 and "not an embedding store" in err


def test_help_lists_every_exit_code_and_version(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    for code in exitcodes.EXIT_CODES:
        assert f"  {code:>3}  " in text
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    from genoray import __version__

    assert capsys.readouterr().out.strip() == f"genoray {__version__}"


# ---- strict JSON (issue 16 item 3) -------------------------------------------------------------

@pytest.mark.slow
def test_json_output_is_strict_and_nan_is_null_with_a_reason(tmp_path, capsys):
    # a test split with a single class: AUROC is undefined
    data = toy_table(tmp_path / "t.parquet", n=60)
    import pyarrow.parquet as pq

    t = pq.read_table(data).to_pydict()
    t["split"] = ["test" if (i % 4 == 0 and lab == "at") else "train" for i, lab in enumerate(t["label"])]
    import pyarrow as pa

    pq.write_table(pa.table(t), data)
    for args in (["embed", data, "--out", tmp_path / "s", "--no-ray"], ["index", tmp_path / "s", "--out", tmp_path / "i"],
                 ["train", tmp_path / "s", "--index", tmp_path / "i", "--out", tmp_path / "h"]):
        assert run(capsys, *args)[0] == 0
    rc, out, err = run(capsys, "evaluate", tmp_path / "s", "--index", tmp_path / "i", "--head", tmp_path / "h",
                       "--json")
    assert rc == 0
    doc = strict_loads(out)
    assert doc["methods"]["fused"]["auroc"] is None
    assert "auroc" in err and "written as null" in err
    rc, out, err = run(capsys, "evaluate", tmp_path / "s", "--index", tmp_path / "i", "--head", tmp_path / "h")
    assert "AUROC" in out and "undefined" in out


# ---- splits (issue 16 item 4) ------------------------------------------------------------------

@pytest.mark.slow
def test_test_fraction_holds_out_an_exact_stratified_seeded_split(tmp_path, capsys):
    import collections

    from genoray.embedding.store import EmbeddingStore

    data = toy_table(tmp_path / "u.parquet", n=70, splits=False, labels=("at", "gc", "at", "gc", "at", "gc", "gc"))
    counts = collections.Counter(("at", "gc", "at", "gc", "at", "gc", "gc")[i % 7] for i in range(70))

    def embed(out, *extra):
        rc, _, err = run(capsys, "embed", data, "--out", out, "--no-ray", "--test-fraction", "0.25", *extra)
        assert rc == 0, err
        e = EmbeddingStore(out).load()
        return dict(zip(e.ids, e.splits)), e

    a, e = embed(tmp_path / "a")
    for label, n in counts.items():
        got = collections.Counter(s for s, lab in zip(e.splits, e.labels) if lab == label)
        assert got == {"test": round(0.25 * n), "train": n - round(0.25 * n)}, label
    assert embed(tmp_path / "b")[0] == a  # seeded: the same split again
    assert embed(tmp_path / "c", "--split-seed", "1")[0] != a
    renamed, _ = embed(tmp_path / "d", "--train-split", "fit", "--test-split", "holdout")
    assert renamed == {k: {"train": "fit", "test": "holdout"}[v] for k, v in a.items()}
    # the stages downstream find the assigned splits without further flags
    assert run(capsys, "index", tmp_path / "a", "--out", tmp_path / "i")[0] == 0
    assert run(capsys, "train", tmp_path / "a", "--index", tmp_path / "i", "--out", tmp_path / "h")[0] == 0
    rc, out, _ = run(capsys, "evaluate", tmp_path / "a", "--index", tmp_path / "i", "--head", tmp_path / "h", "--json")
    assert rc == 0 and strict_loads(out)["n"] == sum(v == "test" for v in a.values())
    # data that has a split column keeps it
    split_data = toy_table(tmp_path / "s.parquet", n=40)
    assert run(capsys, "embed", split_data, "--out", tmp_path / "e", "--no-ray", "--test-fraction", "0.5")[0] == 0
    e = EmbeddingStore(tmp_path / "e").load()
    assert sum(s == "test" for s in e.splits) == 8  # every 5th row, as in the file


def test_kmer_pos_never_fits_on_test_rows(tmp_path, capsys):
    import json

    # train rows are 50 bp, the (more numerous) test rows 80 bp: the fitted window must be 50
    data = toy_table(tmp_path / "t.parquet", n=60, lengths=lambda i: 50 if i % 5 == 0 else 80)
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pq.read_table(data).to_pydict()
    t["split"] = ["train" if i % 5 == 0 else "test" for i in range(60)]
    pq.write_table(pa.table(t), data)
    rc, _, err = run(capsys, "embed", data, "--out", tmp_path / "s", "--no-ray", "--encoder", "kmer-pos",
                     "--pos-enable", "always")
    assert rc == 0, err
    fitted = json.loads((tmp_path / "s" / "encoder.json").read_text())["fitted"]["config"]["position"]
    assert fitted["window"] == 50
    # no train rows at all: an error naming the splits, not a silent fit on the test rows
    t["split"] = ["dev" if i % 5 == 0 else "test" for i in range(60)]
    pq.write_table(pa.table(t), data)
    rc, _, err = run(capsys, "embed", data, "--out", tmp_path / "s2", "--no-ray", "--encoder", "kmer-pos")
    assert rc == 2 and "no records of split 'train'" in err and "['dev', 'test']" in err
    rc, _, err = run(capsys, "embed", data, "--out", tmp_path / "s3", "--no-ray", "--encoder", "kmer-pos",
                     "--train-split", "dev", "--pos-enable", "always")
    assert rc == 0, err
    assert json.loads((tmp_path / "s3" / "encoder.json").read_text())["fitted"]["config"]["position"]["window"] == 50


@pytest.mark.slow
def test_quickstart_fails_fast_on_missing_split_and_takes_split_names(tmp_path, capsys):
    import time

    import pyarrow as pa
    import pyarrow.parquet as pq

    data = toy_table(tmp_path / "g.parquet", n=60)
    t = pq.read_table(data).to_pydict()
    t["split"] = ["test" if s == "test" else "dev" for s in t["split"]]
    pq.write_table(pa.table(t), data)
    t0 = time.perf_counter()
    rc, _, err = run(capsys, "quickstart", "--data", data, "--workdir", tmp_path / "w", "--no-ray")
    assert rc == 2 and "no rows in the train split 'train'" in err and "'dev': 48" in err
    assert time.perf_counter() - t0 < 5 and not (tmp_path / "w").exists()  # before any embedding
    rc, out, err = run(capsys, "quickstart", "--data", data, "--workdir", tmp_path / "w2", "--no-ray",
                       "--train-split", "dev", "--json")
    assert rc == 0, err
    run_ = strict_loads(out)["runs"][0]
    assert run_["evaluation"]["split"] == "test" and run_["evaluation"]["n"] == 12
    assert run_["evaluation"]["train_split"] == "dev" and run_["index"]["ntotal"] == 48


@pytest.mark.slow
def test_evaluate_split_all_agrees_with_index_and_train(tmp_path, capsys):
    data = toy_table(tmp_path / "t.parquet", n=40)
    for args in (["embed", data, "--out", tmp_path / "s", "--no-ray"],
                 ["index", tmp_path / "s", "--out", tmp_path / "i", "--split", "all"],
                 ["train", tmp_path / "s", "--index", tmp_path / "i", "--out", tmp_path / "h"]):
        assert run(capsys, *args)[0] == 0  # train fits on the split the index holds: no flag restates it
    rc, out, err = run(capsys, "evaluate", tmp_path / "s", "--index", tmp_path / "i", "--head", tmp_path / "h",
                       "--split", "all", "--json")
    assert rc == 0, err
    rep = strict_loads(out)
    assert rep["split"] == "all" and rep["n"] == 40 and rep["train_split"] is None  # the index's: every row


# ---- reuse a fitted encoder (issue 16 item 5) --------------------------------------------------

@pytest.mark.slow
def test_encoder_from_store_index_or_bundle_makes_stores_comparable(tmp_path, capsys):
    import json

    a = toy_table(tmp_path / "a.parquet", n=50, lengths=lambda i: 60)
    b = toy_table(tmp_path / "b.parquet", n=50, lengths=lambda i: 70, seed=1)
    common = ["--no-ray", "--encoder", "kmer-pos", "--pos-enable", "always"]
    assert run(capsys, "embed", a, "--out", tmp_path / "sa", *common)[0] == 0
    assert run(capsys, "embed", b, "--out", tmp_path / "sb", *common)[0] == 0
    rc, _, err = run(capsys, "shift", tmp_path / "sa", tmp_path / "sb")
    assert rc == 2 and "different encoders" in err and "--encoder-from" in err
    fp = json.loads((tmp_path / "sa" / "store.json").read_text())["fingerprint"]
    assert run(capsys, "index", tmp_path / "sa", "--out", tmp_path / "ia")[0] == 0
    assert run(capsys, "train", tmp_path / "sa", "--index", tmp_path / "ia", "--out", tmp_path / "ha")[0] == 0
    assert run(capsys, "publish", tmp_path / "bundles", "--index", tmp_path / "ia", "--head", tmp_path / "ha")[0] == 0
    for source in ("sa", "ia", "bundles"):
        out = tmp_path / f"sb_{source}"
        rc, _, err = run(capsys, "embed", b, "--out", out, "--no-ray", "--encoder-from", tmp_path / source)
        assert rc == 0, err
        assert json.loads((out / "store.json").read_text())["fingerprint"] == fp, source
    rc, out, err = run(capsys, "shift", tmp_path / "sa", tmp_path / "sb_sa")
    assert rc in (0, 5), err
    assert "n_new" in strict_loads(out)
    rc, _, err = run(capsys, "embed", b, "--out", tmp_path / "x", "--no-ray", "--encoder-from", tmp_path / "sa",
                     "--encoder", "kmer")
    assert rc == 2 and "not both" in err


# ---- small things (issue 16 item 8) ------------------------------------------------------------

@pytest.fixture
def built(tmp_path, capsys):
    """A toy store, index and head built through the CLI."""
    data = toy_table(tmp_path / "t.parquet", n=60)
    for args in (["embed", data, "--out", tmp_path / "s", "--no-ray"], ["index", tmp_path / "s", "--out", tmp_path / "i"],
                 ["train", tmp_path / "s", "--index", tmp_path / "i", "--out", tmp_path / "h"]):
        assert run(capsys, *args)[0] == 0
    return tmp_path, data


def test_predict_formats_and_neighbour_sequences(built, capsys):
    import json

    import pyarrow.parquet as pq

    tmp, data = built
    q = tmp / "q.fa"
    q.write_text(">q1\n" + "GGCCGGCCAT" * 6 + "\n>q2\n" + "AATTAATTGC" * 6 + "\n>bad\nACGTQ\n")
    base = ["predict", q, "--index", tmp / "i", "--head", tmp / "h", "--k", "3"]
    rc, out, err = run(capsys, *base)
    lines = [strict_loads(x) for x in out.strip().splitlines()]
    assert rc == 0 and [x["seq_id"] for x in lines] == ["q1", "q2"] and [x["label"] for x in lines] == ["gc", "at"]
    rc, out, _ = run(capsys, *base, "--format", "tsv")
    header, *rows = [r.split("\t") for r in out.strip().splitlines()]
    assert header == ["seq_id", "label", "ood_score", "p_at", "p_gc", "neighbours"] and len(rows) == 2
    assert rows[0][0] == "q1" and rows[0][1] == "gc" and len(rows[0][5].split(";")) == 3
    assert abs(float(rows[0][3]) + float(rows[0][4]) - 1) < 1e-5
    rc, _, err = run(capsys, *base, "--format", "parquet")
    assert rc == 2 and "needs --out" in err
    rc, _, _ = run(capsys, *base, "--format", "parquet", "--out", tmp / "p.parquet", "--with-sequences")
    t = pq.read_table(tmp / "p.parquet").to_pylist()
    assert rc == 0 and [r["seq_id"] for r in t] == ["q1", "q2"]
    src = dict(zip(*(pq.read_table(data).column(c).to_pylist() for c in ("id", "sequence"))))
    for r in t:
        assert len(r["neighbours"]) == 3
        for nb in r["neighbours"]:
            assert nb["sequence"] == src[nb["seq_id"]]  # the neighbour's own sequence, from the source file
    empty = tmp / "e.fa"
    empty.write_text(">x\nQQQQ\n")
    rc, out, err = run(capsys, "predict", empty, "--index", tmp / "i", "--head", tmp / "h")
    assert rc == 6 and "nothing written" in err and json.loads(err.strip().splitlines()[0])["predicted"] == 0


def test_bundles_lists_versions_and_current(built, capsys):
    tmp, _ = built
    root = tmp / "b"
    assert run(capsys, "publish", root, "--index", tmp / "i", "--head", tmp / "h")[0] == 0
    assert run(capsys, "publish", root, "--index", tmp / "i", "--head", tmp / "h")[0] == 0
    versions = sorted(p.name for p in (root / "versions").iterdir())
    assert run(capsys, "publish", root, "--version", versions[0])[0] == 0  # roll back
    rc, out, _ = run(capsys, "bundles", root, "--json", "--verify")
    rows = strict_loads(out)
    assert rc == 0 and [r["version"] for r in rows] == versions
    assert [r["current"] for r in rows] == [True, False] and all(r["verified"] == "ok" for r in rows)
    rc, out, _ = run(capsys, "bundles", root)
    assert rc == 0 and out.splitlines()[1].startswith(f"* {versions[0]}") and "* = CURRENT" in out
    rc, _, err = run(capsys, "bundles", tmp / "nope")
    assert rc == 2 and "not a bundle root" in err


def test_serve_without_keys_names_no_auth_and_never_starts_ray(built, capsys, monkeypatch):
    import genoray.infra.runtime

    def no_ray(*a, **k):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(genoray.infra.runtime, "init_ray", no_ray)
    monkeypatch.delenv("GENORAY_API_KEYS", raising=False)
    tmp, _ = built
    rc, _, err = run(capsys, "serve", tmp / "b")
    assert rc == 2 and "--no-auth" in err and "GENORAY_API_KEYS" in err
    rc, _, err = run(capsys, "serve", tmp / "b", "--no-auth")
    assert rc == 2 and "no CURRENT bundle" in err


def test_serve_no_auth_on_a_public_bind_is_refused_unless_acknowledged(built, capsys, monkeypatch):
    """``--no-auth`` with a non-loopback ``--host`` is a usage error (exit 2) that says why and
    how; ``--allow-public-no-auth`` accepts it (the run then stops at the missing bundle)."""
    import genoray.infra.runtime

    def no_ray(*a, **k):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(genoray.infra.runtime, "init_ray", no_ray)
    tmp, _ = built
    for host in ("0.0.0.0", "10.1.2.3", "::", "example.org"):
        rc, _, err = run(capsys, "serve", tmp / "b", "--no-auth", "--host", host)
        assert rc == 2 and f"host {host}, which is not loopback" in err, err
        assert "--host 127.0.0.1" in err and "GENORAY_API_KEYS" in err and "--allow-public-no-auth" in err
    for extra in (("--host", "0.0.0.0", "--allow-public-no-auth"), ("--host", "127.0.0.2"), ("--host", "localhost")):
        rc, _, err = run(capsys, "serve", tmp / "b", "--no-auth", *extra)
        assert rc == 2 and "no CURRENT bundle" in err, err


def test_shift_plot_checks_matplotlib_before_the_test(built, capsys, monkeypatch):
    import sys

    import genoray.evaluation.shift

    def never(*a, **k):
        raise AssertionError("the shift test ran")

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.setattr(genoray.evaluation.shift, "ShiftDetector", never)
    tmp, _ = built
    rc, _, err = run(capsys, "shift", tmp / "s", tmp / "s", "--plot", tmp / "x.png")
    assert rc == 2 and "--plot needs matplotlib" in err and not (tmp / "x.png").exists()


# ---- leftovers and noise (issue 16 items 9, 10) ------------------------------------------------

@pytest.mark.slow
def test_quickstart_removes_its_temp_workdir_unless_keep(tmp_path, capsys, monkeypatch):
    import tempfile

    data = toy_table(tmp_path / "t.parquet", n=40)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    rc, out, err = run(capsys, "quickstart", "--data", data, "--no-ray")
    assert rc == 0 and "removed the work dir" in err and list(tmp.iterdir()) == []
    rc, out, err = run(capsys, "quickstart", "--data", data, "--no-ray", "--keep", "--json")
    kept = [p.name for p in tmp.iterdir()]
    assert rc == 0 and len(kept) == 1 and kept[0].startswith("genoray-quickstart-")
    assert strict_loads(out)["workdir"] == str(tmp / kept[0])


@pytest.mark.ray
def test_embed_on_ray_is_quiet_logs_progress_and_leaves_no_temp_dir(tmp_path):
    """A real CLI process with a fresh TMPDIR: Ray's noise hidden, progress lines on a non-TTY
    stderr, no gr-ray-* left behind; -v and --keep bring them back."""
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    data = toy_table(tmp_path / "t.parquet", n=40)
    tmp = Path(tempfile.mkdtemp(prefix="g", dir="/tmp"))  # short: Ray's socket paths must stay < 108 bytes
    env = {**os.environ, "TMPDIR": str(tmp), "GENORAY_PROGRESS_S": "0"}
    env.pop("RAY_ADDRESS", None)
    p = subprocess.run([sys.executable, "-m", "genoray.cli", "embed", str(data), "--out", str(tmp_path / "s"),
                        "--rows-per-unit", "10"], capture_output=True, text=True, env=env, timeout=240, check=False)
    assert p.returncode == 0, p.stderr
    assert "core_worker" not in p.stderr and "Progress bars disabled" not in p.stderr
    assert "embed " in p.stderr and "units, " in p.stderr and "records/s" in p.stderr and "ETA" in p.stderr
    assert not [x for x in tmp.iterdir() if x.name.startswith("gr-ray-")]
    p = subprocess.run([sys.executable, "-m", "genoray.cli", "embed", str(data), "--out", str(tmp_path / "s2"),
                        "--keep"], capture_output=True, text=True, env=env, timeout=240, check=False)
    assert p.returncode == 0 and [x for x in tmp.iterdir() if x.name.startswith("gr-ray-")], p.stderr
    shutil.rmtree(tmp, ignore_errors=True)


def test_progress_lines():
    import io

    from genoray.infra.progress import Progress

    buf = io.StringIO()
    p = Progress("embed x", total_units=4, every_s=0, stream=buf)
    p.update(100)
    p.update(300, units=3)
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("embed x: 1/4 units, 100 records,") and "ETA" in lines[0]
    assert lines[1].startswith("embed x: 4/4 units, 400 records,") and lines[1].endswith("ETA 0m00s")


# ---- readable results (issue 16 item 7) --------------------------------------------------------

def test_evaluate_reports_split_n_classes_per_class_confusion_and_cis(built, capsys):
    import numpy as np

    from genoray.embedding.store import EmbeddingStore
    from genoray.predict.predictor import Predictor

    tmp, _ = built
    rc, out, _ = run(capsys, "evaluate", tmp / "s", "--index", tmp / "i", "--head", tmp / "h", "--json",
                     "--bootstrap", "50")
    rep = strict_loads(out)
    assert rc == 0 and rep["split"] == "test" and rep["n"] == 12 and rep["classes"] == ["at", "gc"]
    assert rep["positive_class"] == "gc" and rep["class_counts"] == {"at": 6, "gc": 6}
    assert 0 <= rep["head"]["knn_weight"] <= 1 and rep["head"]["calibration_T"] > 0
    for key in ("f1", "auroc", "knn_weight", "calibration_T", "confusion_matrix", "ci95"):
        assert rep["definitions"][key]
    # the fused head's confusion matrix against a hand count of the predictor's labels
    test = EmbeddingStore(tmp / "s").load("test")
    pred = Predictor.load(tmp / "i", tmp / "h")
    proba, _, _ = pred.predict_vectors(test.vectors, list(test.ids))
    predicted = np.asarray(pred.head.classes_, dtype=object)[proba.argmax(axis=1)]
    cm = [[int(np.sum((test.labels == t) & (predicted == p))) for p in ("at", "gc")] for t in ("at", "gc")]
    fused = rep["methods"]["fused"]
    assert fused["confusion_matrix"] == cm and fused["n"] == 12
    for i, c in enumerate(("at", "gc")):
        tp, col = cm[i][i], cm[0][i] + cm[1][i]
        assert fused["per_class"][c]["recall"] == pytest.approx(tp / sum(cm[i]))
        assert fused["per_class"][c]["precision"] == pytest.approx(tp / col if col else 0.0)
        assert fused["per_class"][c]["support"] == sum(cm[i])
    assert fused["accuracy"] == pytest.approx((cm[0][0] + cm[1][1]) / 12)
    for m in rep["methods"].values():
        lo, hi = m["ci95"]["accuracy"]
        assert lo <= m["accuracy"] <= hi
    rc, text, _ = run(capsys, "evaluate", tmp / "s", "--index", tmp / "i", "--head", tmp / "h", "--bootstrap", "20")
    assert "test split: test (n = 12; at: 6, gc: 6); positive class for AUROC: gc" in text
    assert "kNN weight" in text and "calibration T" in text and "confusion matrix" in text and "definitions:" in text


def test_native_stderr_filter_drops_only_ray_native_lines():
    import os
    import subprocess
    import sys

    code = """
import os, sys
from genoray.cli.quiet import NativeStderrFilter
with NativeStderrFilter():
    os.write(2, b"[2026-11-29 04:42:15,502 E 5076 5076] core_worker.cc:2465: Actor with class name ... max_restarts > 0\\n")
    os.write(2, b"kept line 1\\n[not a ray line]\\n")
    print("kept line 2", file=sys.stderr)
    os.write(2, b"progress 10%\\rprogress 20%")
print("after", file=sys.stderr)
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60, check=False,
                       env={**os.environ})
    assert p.returncode == 0, p.stderr
    assert p.stderr == b"kept line 1\n[not a ray line]\nkept line 2\nprogress 10%\rprogress 20%after\n"


@pytest.mark.ray
def test_test_fraction_split_is_the_same_on_ray_workers(ray_session, tmp_path):
    from genoray.embedding.job import embed_sequences
    from genoray.embedding.store import EmbeddingStore
    from genoray.encoders.kmer import KmerEncoder

    data = toy_table(tmp_path / "u.parquet", n=60, splits=False)
    cfg = C.ReadConfig(test_fraction=0.25, split_seed=3)
    embed_sequences(data, tmp_path / "ray", KmerEncoder(), read_cfg=cfg, use_ray=True)
    embed_sequences(data, tmp_path / "local", KmerEncoder(), read_cfg=cfg, use_ray=False)
    a, b = EmbeddingStore(tmp_path / "ray").load(), EmbeddingStore(tmp_path / "local").load()
    assert dict(zip(a.ids, a.splits)) == dict(zip(b.ids, b.splits))
    assert sum(s == "test" for s in a.splits) == 16  # round(0.25 * 30) per label


def test_one_grammar_json_and_verbose_on_every_command():
    """``--json`` is accepted by every command (serve announces itself in JSON), and ``-v`` works before or
    after the command name (an absent ``-v`` after it does not undo one before it)."""
    from genoray.cli.commands import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = [n for n, p in sub.choices.items() if "--json" not in p._option_string_actions]
    assert missing == []
    for argv, verbose in ((["-v", "index", "S", "--out", "O"], True), (["index", "S", "--out", "O", "-v"], True),
                          (["index", "S", "--out", "O"], False), (["-v", "embed", "x", "--out", "O", "--json"], True)):
        assert parser.parse_args(argv).verbose is verbose, argv
