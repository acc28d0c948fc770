"""``--config FILE`` and ``-q`` on every command (genoray.cli.parsing)."""

from __future__ import annotations

import json

import pytest

from genoray.cli import commands as cli
from genoray.cli.flags import GIVEN
from genoray.cli.parsing import parse_args
from tests.conftest import write_fasta


def _parse(*argv):
    return parse_args(cli.build_parser(), [str(a) for a in argv])


def _yaml(path, text):
    path.write_text(text)
    return path


def test_config_gives_flags_inputs_and_lists_and_the_command_line_wins(tmp_path):
    # embed: a list-valued positional, a renamed flag (read_batch_size), a switch, a tuple setting
    cfg = _yaml(tmp_path / "embed.yaml", "inputs: [a.fa, b.fa]\nout: st\nread_batch_size: 512\nno-ray: true\n"
                                         "ks: [2, 3]\nallow-empty: true\n")
    a = _parse("embed", "--config", cfg)
    assert a.inputs == ["a.fa", "b.fa"] and a.out == "st" and a.no_ray is True and a.allow_empty is True
    assert getattr(a, "read.batch_size") == 512 and getattr(a, "kmer.ks") == (2, 3)
    assert {"read.batch_size", "kmer.ks"} <= getattr(a, GIVEN)  # set by the file counts as given
    # the command line wins: inputs, --out and --ks; the file still gives what the line does not
    a = _parse("--config", cfg, "embed", "c.fa", "--out", "other", "--ks", "4")
    assert a.inputs == ["c.fa"] and a.out == "other" and getattr(a, "kmer.ks") == (4,)
    assert getattr(a, "read.batch_size") == 512
    # index: a required flag and a positional from the file; the type alias key
    cfg = _yaml(tmp_path / "index.yaml", "store: S\nout: I\nray: true\ntype: Flat\nshard_size: 1000\n")
    a = _parse("index", "--config", cfg)
    assert (a.store, a.out, a.ray, getattr(a, "index.index_type")) == ("S", "I", True, "Flat")
    assert getattr(a, "index.shard_size") == 1000
    # train: a renamed setting (HeadConfig.seed is --head-seed), overridden on the command line
    cfg = _yaml(tmp_path / "train.yaml", "store: S\nindex: I\nout: H\nhead_seed: 3\n")
    assert getattr(_parse("train", "--config", cfg), "head.seed") == 3
    assert getattr(_parse("train", "--config", cfg, "--head-seed", "5"), "head.seed") == 5
    # plan: numbers, and a list-valued flag of a nested config
    cfg = _yaml(tmp_path / "plan.yaml", "n: 5000\ndim: 64\nmemory-per-node-mb: 2048\njson: true\n")
    a = _parse("plan", "--config", cfg)
    assert (getattr(a, "plan.n"), getattr(a, "plan.dim"), a.json) == (5000, 64, True)
    # predict: a repeatable (nargs +) flag as a list
    cfg = _yaml(tmp_path / "predict.yaml", "inputs: x.fa\nindex: I\nhead: H\ntarget: [t1.fa, t2.fa]\n")
    a = _parse("predict", "--config", cfg)
    assert (a.inputs, a.index, a.head, a.target) == (["x.fa"], "I", "H", ["t1.fa", "t2.fa"])


@pytest.mark.parametrize("text, expected", [
    ("outt: I\n", "unknown key 'outt' for this command; did you mean out?"),
    ("shard-sizes: 5\nstore: S\nout: I\n", "unknown key 'shard-sizes' for this command; did you mean shard-size"),
    ("out: [a, b]\nstore: S\n", "key 'out': expected a value as on the command line (--out), got a list"),
    ("store: S\nout: I\nray: yes please\n", "key 'ray': expected true or false (a switch), got 'yes please'"),
    ("store: S\nout: I\nshard-size: many\n", "key 'shard-size': invalid value 'many'"),
    ("store: S\nout: I\nflat-threshold: 1.5\n", "key 'flat-threshold': invalid value '1.5'"),
    ("store: S\nout: I\nmemory-budget-mb: true\n", "key 'memory-budget-mb': expected N as on the command line "
                                                      "(--memory-budget-mb), got a true/false: True"),
    ("- store\n- S\n", "expected a mapping of flag names to values (key: value lines), got a list"),
    ("store: [S\n", "not valid YAML"),
])
def test_bad_config_files_are_usage_errors_naming_file_and_key(tmp_path, capsys, text, expected):
    cfg = _yaml(tmp_path / "c.yaml", text)
    with pytest.raises(SystemExit) as e:
        _parse("index", "--config", cfg)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"genoray index: error: --config {cfg}: {expected}" in err, err


def test_missing_config_file_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["plan", "--config", str(tmp_path / "nope.yaml")])
    assert e.value.code == 2
    assert f"--config {tmp_path / 'nope.yaml'}: cannot read it: No such file or directory" in capsys.readouterr().err


def test_quiet_and_verbose_anywhere_and_not_together(capsys, monkeypatch):
    monkeypatch.delenv("GENORAY_QUIET", raising=False)
    for argv, quiet in ((["-q", "index", "S", "--out", "O"], True), (["index", "S", "--out", "O", "-q"], True),
                        (["index", "S", "--out", "O"], False), (["index", "S", "--quiet", "--out", "O"], True)):
        assert _parse(*argv).quiet is quiet, argv
    for argv in (["-q", "-v", "plan"], ["-q", "plan", "-v"], ["plan", "--quiet", "--verbose"]):
        with pytest.raises(SystemExit) as e:
            _parse(*argv, "--n", "10", "--dim", "4")
        assert e.value.code == 2
        assert "give -q (only the result and errors) or -v (progress and tracebacks), not both" in \
            capsys.readouterr().err


def test_quiet_prints_only_the_result_and_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("GENORAY_QUIET", raising=False)  # -q sets it for this process: restored after the test
    fa = write_fasta(tmp_path / "in.fa", [("a", "ACGT" * 20), ("b", "MKVLAAGIVGLLLAQ"), ("c", "GGCA" * 20)])
    rc = cli.main(["embed", str(fa), "--out", str(tmp_path / "s1"), "--no-ray"])
    out = capsys.readouterr()
    assert rc == 0 and "genoray embed: 1 records rejected" in out.err
    rc = cli.main(["embed", str(fa), "--out", str(tmp_path / "s2"), "--no-ray", "-q"])
    out = capsys.readouterr()
    assert rc == 0 and out.err == ""
    assert json.loads(out.out)["written"] == 2
    # errors still reach stderr under -q
    rc = cli.main(["-q", "index", str(tmp_path / "missing"), "--out", str(tmp_path / "i")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("genoray index: error: ")
