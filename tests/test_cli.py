"""The command line: flags generated from the config dataclasses, exit codes, output formats."""

from __future__ import annotations

import dataclasses

import pytest

from genoray import cli
from genoray.config import (CleanPolicy, EmbedConfig, HeadConfig, HFConfig, IndexConfig, KmerConfig, PositionConfig,
                            ReadConfig, ReindexConfig, ServeConfig, ServiceLimits, ShiftConfig, parse)
from genoray.flags import leaves

# what each command needs besides flags (positionals, required options)
REQUIRED = {
    "quickstart": [],
    "embed": ["in.fa", "--out", "o"],
    "index": ["store", "--out", "o"],
    "train": ["store", "--index", "i", "--out", "o"],
    "reindex": ["in.fa", "--work", "w", "--bundles", "b"],
    "serve": ["root"],
    "shift": ["a", "b"],
}
STAGE_CONFIGS = (CleanPolicy, ReadConfig, KmerConfig, PositionConfig, HFConfig, EmbedConfig, IndexConfig,
                 HeadConfig, ReindexConfig, ServeConfig, ServiceLimits, ShiftConfig)
# fields set by the command itself rather than by a flag of their own
SET_BY_COMMAND = {(ServeConfig, "root"): "positional ROOT", (HFConfig, "model"): "--encoder hf:<model>",
                  (KmerConfig, "position"): "--encoder kmer-pos"}


def _flag_fields() -> set[tuple[type, str]]:
    """(owner class, field name) of every field that some command exposes as a flag."""
    parser = cli.build_parser()
    subs = next(a for a in parser._actions if a.dest == "command").choices
    dests = {a.dest for sp in subs.values() for a in sp._actions}
    out = set()
    for groups in cli.COMMAND_GROUPS.values():
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
               and f.name not in ("clean", "limits", "index", "head", "embed")]
    assert missing == []


@pytest.mark.parametrize("command", sorted(cli.COMMAND_GROUPS))
def test_parsed_defaults_equal_dataclass_defaults(command):
    from genoray.flags import build

    args = cli.build_parser().parse_args([command, *REQUIRED[command]])
    for g in cli.COMMAND_GROUPS[command]:
        fixed = {"root": "root"} if g.cls is ServeConfig else {"model": "m"} if g.cls is HFConfig else {}
        expected = g.cls(**fixed)
        if g.cls is KmerConfig:
            expected = KmerConfig()
        assert build(args, g, **fixed) == expected, (command, g.cls.__name__)


def test_flags_reach_nested_and_renamed_fields():
    from genoray.flags import build

    p = cli.build_parser()
    a = p.parse_args(["embed", "x.fa", "--out", "o", "--sequence-column", "seq", "--id-column", "name",
                      "--max-n-fraction", "0.3", "--min-length", "5", "--max-length", "900", "--ambiguous", "reject",
                      "--canonical", "--ks", "2,3", "--no-gc", "--read-batch-size", "7", "--batch-size", "11",
                      "--pos-window", "80", "--label-column", "none"])
    read = build(a, cli.READ)
    assert read.sequence_column == "seq" and read.id_column == "name" and read.label_column is None
    assert read.batch_size == 7 and build(a, cli.EMBED).batch_size == 11
    assert read.clean == CleanPolicy(max_n_fraction=0.3, min_length=5, max_length=900, ambiguous="reject")
    assert build(a, cli.KMER) == KmerConfig(ks=(2, 3), canonical=True, gc=False)
    enc = cli._encoder(a, "kmer-pos")
    assert enc.config.position == PositionConfig(window=80) and enc.config.canonical
    assert cli._encoder(a, "kmer").config.position is None

    # the old flag names still work
    a = p.parse_args(["index", "s", "--out", "o", "--split", "all", "--type", "Flat", "--target-recall", "0.9"])
    assert build(a, cli.INDEX) == IndexConfig(split=None, index_type="Flat", target_recall=0.9)
    a = p.parse_args(["train", "s", "--index", "i", "--out", "o", "--k", "5", "--C", "0.5"])
    assert build(a, cli.HEAD) == HeadConfig(k=5, C=0.5)
    a = p.parse_args(["serve", "r", "--no-auth", "--no-access-log", "--ingress", "haproxy", "--rate-per-key", "2"])
    cfg = build(a, cli.SERVE, root="r")
    assert not cfg.require_key and not cfg.access_log and cfg.ingress == "haproxy"
    assert cfg.limits == ServiceLimits(rate_per_key=2.0)
    a = p.parse_args(["reindex", "x", "--work", "w", "--bundles", "b", "--recall-floor", "0.8", "--head-seed", "3",
                      "--split", "dev"])
    cfg = build(a, cli.REINDEX)
    assert cfg.recall_floor == 0.8 and cfg.head.seed == 3 and cfg.index.split == "dev" and cfg.index.seed == 0


def test_bad_flag_values_fail_with_the_config_message(capsys):
    assert cli.main(["index", "s", "--out", "o", "--target-recall", "1.5"]) == 2
    assert "target_recall must be in (0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["serve", "r", "--ingress", "bogus"])
    assert e.value.code == 2


def test_configs_validate_and_parse_from_dicts():
    with pytest.raises(ValueError, match="ingress must be"):
        ServeConfig(root="r", ingress="nginx")
    with pytest.raises(ValueError, match="k must be >= 1"):
        HeadConfig(k=0)
    with pytest.raises(ValueError, match="ood_quantile"):
        ShiftConfig(ood_quantile=1.5)
    with pytest.raises(ValueError, match="unknown keys"):
        parse(ReindexConfig, {"index": {"bogus": 1}})
    cfg = parse(ServeConfig, {"root": "r", "limits": {"max_k": 5}, "key_hashes": ["a", "b"]})
    assert cfg.limits.max_k == 5 and cfg.key_hashes == ("a", "b")
    assert ServeConfig(root="r", limits={"max_k": 5}).limits == ServiceLimits(max_k=5)  # the old dict form
    assert parse(KmerConfig, {"ks": [1, 2], "position": {"ks": [1]}}) == KmerConfig(ks=(1, 2), position=PositionConfig(ks=(1,)))
    with pytest.raises(ValueError, match="clean.ambiguous: .*'to_n' or 'reject'"):
        parse(ReadConfig, {"clean": {"ambiguous": "keep"}})


def test_old_import_locations_still_work():
    from genoray.evaluate import Study, load_study  # noqa: F401
    from genoray.reindex import ReindexConfig as R
    from genoray.serve import ServeConfig as S
    from genoray.service import ServiceLimits as L
    from genoray.shift import ShiftConfig as H

    assert (R, S, L, H) == (ReindexConfig, ServeConfig, ServiceLimits, ShiftConfig)
