"""Every bad input of issue 26's "Errors" list: its exit code (genoray.cli.exitcodes) and a
message that names the file or flag, the reason and, where there is one, the fix."""

from __future__ import annotations

import pytest

from genoray.cli import commands as cli

FILES = {
    "empty.fa": "",
    "nogt.fa": "ACGTACGT\nACGT\n",
    "noseq.tsv": "id\tseq\nr1\tACGT\n",
    "study_bad.yaml": "datasets: [\n",
    "study_key.yaml": "foo: 1\n",
    "config_list.yaml": "- n\n- 5\n",
}
CASES = [  # argv ({d}: the temp dir), exit code, what stderr's last line says
    ("embed {d}/empty.fa --out {d}/s1 --no-ray", 6, "empty.fa: no records (an empty file? give FASTA, FASTQ or a "
                                                    "TSV/CSV/Parquet with a sequence column)"),
    ("embed {d}/nogt.fa --out {d}/s2 --no-ray", 6, "nogt.fa: record 1: malformed: Error in FASTA file at line 1: "
                                                  "Expected '>' at beginning of record"),
    ("embed {d}/noseq.tsv --out {d}/s3 --no-ray", 6, "noseq.tsv: file: missing column(s) ['sequence'] (id column: "
                                                     "seq_id/id, sequence column: 'sequence'); found ['id', 'seq']"),
    ("plan", 2, "genoray plan: error: give --n N and --dim D (rows and vector size to plan for), or --store STORE"),
    ("plan --n -5 --dim 4", 2, "genoray plan: error: PlanConfig: n, dim and embed_rate must be >= 0"),
    ("plan --n 5 --dim 4 --encoder bogus", 2, "unknown encoder 'bogus': use kmer, kmer-pos, hf:<model id or "
                                              "directory> (optionally +kmer or +kmer-pos), both (quickstart)"),
    ("plan --n 5 --dim 4 --memory-per-node 64", 2, "--memory-per-node (GB) is now --memory-per-node-mb (MB, the unit "
                                                   "of every memory flag): give --memory-per-node-mb 65536"),
    ("evaluate {d}/study_bad.yaml --out {d}/r", 2, "study_bad.yaml: not valid YAML: while parsing a flow node"),
    ("evaluate {d}/study_key.yaml --out {d}/r", 2, "study_key.yaml: Study: unknown keys ['foo']"),
    ("train {d}/empty.fa --index {d}/ix --out {d}/h", 2, "empty.fa: not an embedding store (no store.json)"),
    ("predict {d}/empty.fa --index {d}/nope --head {d}/h", 2, "nope: not an index directory (no manifest.json)"),
    ("-q plan --n 5 --dim 4 -v", 2, "give -q (only the result and errors) or -v (progress and tracebacks), not both"),
    ("plan --config {d}/config_list.yaml", 2, "config_list.yaml: expected a mapping of flag names to values"),
    ("plan --n 5 --dim 4 --config {d}/missing.yaml", 2, "missing.yaml: cannot read it: No such file or directory"),
]


@pytest.mark.parametrize("argv, code, says", CASES, ids=[c[0].split(" {d}")[0] + f"-{i}" for i, c in enumerate(CASES)])
def test_bad_input_exit_code_and_message(tmp_path, capsys, monkeypatch, argv, code, says):
    monkeypatch.delenv("GENORAY_QUIET", raising=False)
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    try:
        rc = cli.main(argv.format(d=tmp_path).split())
    except SystemExit as e:  # argparse's usage errors
        rc = e.code
    err = capsys.readouterr().err
    assert rc == code, err
    assert says in err.strip().splitlines()[-1], err


def test_a_head_on_too_few_rows_and_a_head_flag_at_a_store_say_what_to_do(tmp_path, capsys, monkeypatch):
    """Train on 8 rows: the store, split and minimum, not the OOD scorer's array shape; --head at
    a store: what the directory is and what to give; a failed unit is reported once."""
    monkeypatch.delenv("GENORAY_QUIET", raising=False)
    fa = tmp_path / "eight.fa"
    fa.write_text("".join(f">r{i} label={'ab'[i % 2]} split=train\n{'ACGTTGCA' * 8}\n" for i in range(8)))
    d = tmp_path
    assert cli.main(f"embed {fa} --out {d}/st --no-ray".split()) == 0
    assert cli.main(f"index {d}/st --out {d}/ix".split()) == 0
    capsys.readouterr()
    assert cli.main(f"train {d}/st --index {d}/ix --out {d}/h".split()) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "st: split 'train' has 8 rows; a head needs at least 20" in last and "embed more labeled" in last, last
    assert cli.main(f"predict {fa} --index {d}/ix --head {d}/st".split()) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "st: not a head directory (no head.json); it is an embedding store; give the --out directory of " \
           "`genoray train`" in last, last
    (d / "nogt.fa").write_text("ACGT\n")
    assert cli.main(f"embed {d}/nogt.fa --out {d}/s2 --no-ray".split()) == 6
    err = capsys.readouterr().err
    assert err.count("Expected '>' at beginning of record") == 1, err
