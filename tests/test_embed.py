"""Faults in the embedding job: killed actors, a killed driver, bad files, several nodes."""

import gzip
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import write_fasta

from genoray.config import EmbedConfig
from genoray.embedding.job import embed_sequences
from genoray.embedding.store import EmbeddingStore
from genoray.encoders.kmer import KmerEncoder

ROOT = Path(__file__).resolve().parents[1]


def make_corpus(d: Path, n_files: int, per_file: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    files = []
    for f in range(n_files):
        recs = [(f"f{f}_r{i} label={'a' if i % 2 else 'b'}", "".join(rng.choice(list("ACGT"), size=rng.integers(80, 200))))
                for i in range(per_file)]
        files.append(write_fasta(d / f"part{f:02d}.fa", recs))
    return files


def load_sorted(path):
    e = EmbeddingStore(path).load()
    order = np.argsort(e.ids)
    return list(e.ids[order]), e.vectors[order]


def test_bad_files_fail_only_their_unit(tmp_path):
    good = make_corpus(tmp_path, 2, 50)
    data = gzip.compress(b"".join(b">t%d\nACGTACGTAC\n" % i for i in range(20000)))
    (tmp_path / "cut.fa.gz").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.fq").write_bytes(os.urandom(4096))
    rep = embed_sequences(tmp_path, tmp_path / "store", KmerEncoder(), use_ray=False)
    d = rep.to_dict()
    assert d["status"] == "partial" and d["written"] == 100 and d["units"] == 4
    errors = {Path(f["path"]).name: f["error"] for f in d["failed"]}
    assert set(errors) == {"cut.fa.gz", "junk.fq"}
    assert "truncated compressed file" in errors["cut.fa.gz"]
    store = EmbeddingStore(tmp_path / "store")
    assert store.manifest.status == "partial" and store.rows == 100
    assert not any("t1" == i for i in store.load().ids)  # nothing from the truncated file committed
    # fix the inputs and rerun: only the formerly failed units do work
    (tmp_path / "cut.fa.gz").unlink()
    (tmp_path / "junk.fq").unlink()
    again = embed_sequences(good, tmp_path / "store", KmerEncoder(), use_ray=False)
    assert again.status == "complete" and again.skipped == 2 and again.written == 100


def test_duplicate_ids_across_files_are_refused(tmp_path):
    a = write_fasta(tmp_path / "a.fa", [("x", "ACGT"), ("y", "ACGA")])
    b = write_fasta(tmp_path / "b.fa", [("x", "GGGG")])
    from genoray.embedding.job import DuplicateIdError

    with pytest.raises(DuplicateIdError, match="more than one input unit"):
        embed_sequences([a, b], tmp_path / "store", KmerEncoder(), use_ray=False)


def test_parquet_split_into_row_group_units(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(1)
    seqs = ["".join(rng.choice(list("ACGT"), size=50)) for _ in range(1000)]
    pq.write_table(pa.table({"id": [f"p{i}" for i in range(1000)], "sequence": seqs}), tmp_path / "d.parquet",
                   row_group_size=100)
    seqs[503] = "ACGTZ"
    rep = embed_sequences(tmp_path / "d.parquet", tmp_path / "s", KmerEncoder(), use_ray=False,
                          embed_cfg=EmbedConfig(rows_per_unit=250))
    assert rep.units == 4 and rep.written == 1000
    ids, vecs = load_sorted(tmp_path / "s")
    assert ids == sorted(f"p{i}" for i in range(1000))
    assert np.array_equal(vecs[ids.index("p7")], KmerEncoder().embed([seqs[7]])[0])


@pytest.mark.ray
@pytest.mark.chaos
def test_killed_actor_loses_and_duplicates_nothing(ray_session, tmp_path):
    files = make_corpus(tmp_path, 16, 400)
    result = {}

    def run():
        result["report"] = embed_sequences(files, tmp_path / "store", KmerEncoder(), use_ray=True,
                                           embed_cfg=EmbedConfig(num_actors=2, batch_size=50))

    t = threading.Thread(target=run)
    t.start()
    killed = None
    deadline = time.time() + 60
    while killed is None and time.time() < deadline and t.is_alive():
        shards = list((tmp_path / "store" / "shards").glob("*.done.json")) if (tmp_path / "store" / "shards").exists() else []
        if shards:  # the done marker names the actor process that wrote it: kill that actor
            killed = json.loads(shards[0].read_text())["worker_pid"]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    t.join(timeout=120)
    assert killed is not None, "job finished before an actor could be killed"
    rep = result["report"]
    assert rep.status == "complete" and rep.written == rep.accepted == 16 * 400
    ids, _ = load_sorted(tmp_path / "store")
    assert len(ids) == len(set(ids)) == 6400


@pytest.mark.chaos
def test_killed_driver_resumes_and_matches_uninterrupted_run(tmp_path):
    files = make_corpus(tmp_path, 12, 3000)
    script = textwrap.dedent("""
        import sys
        from genoray.embedding.job import embed_sequences
        from genoray.config import EmbedConfig, KmerConfig, PositionConfig
        from genoray.encoders.kmer import KmerEncoder
        embed_sequences(sys.argv[2:], sys.argv[1], KmerEncoder(KmerConfig(position=PositionConfig())),
                        use_ray=False, embed_cfg=EmbedConfig(batch_size=256))
    """)
    args = [sys.executable, "-c", script, str(tmp_path / "store")] + [str(f) for f in files]
    proc = subprocess.Popen(args)
    shard_dir = tmp_path / "store" / "shards"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if shard_dir.exists() and len(list(shard_dir.glob("*.done.json"))) >= 3:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "job finished before it could be killed"
    assert not (tmp_path / "store" / "store.json").exists()
    finished_before = {p.name: p.stat().st_mtime_ns for p in shard_dir.glob("*.done.json")}
    subprocess.run(args, check=True)
    # the uninterrupted reference run
    subprocess.run(args[:3] + [str(tmp_path / "ref")] + args[4:], check=True)
    for name, mtime in finished_before.items():
        assert (shard_dir / name).stat().st_mtime_ns == mtime  # skipped, not redone
    assert not list(shard_dir.glob(".*"))  # no temp files left behind
    a_ids, a = load_sorted(tmp_path / "store")
    b_ids, b = load_sorted(tmp_path / "ref")
    assert a_ids == b_ids and len(a_ids) == 36000 and np.array_equal(a, b)
    assert EmbeddingStore(tmp_path / "store").manifest.counts == EmbeddingStore(tmp_path / "ref").manifest.counts


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("lose_node", [False, pytest.param(True, marks=pytest.mark.chaos)])
def test_multi_node_cluster_embeds_every_record_once(tmp_path, lose_node):
    """Head + two worker nodes on this machine (separate Ray processes); run in a subprocess
    because the test session already has its own Ray. With ``lose_node`` (plan A8) a spare third
    worker node runs from the start and, once the first unit is committed, a node hosting an
    encoder actor is removed (its raylet and the actor killed); the job must still embed every
    record exactly once."""
    files = make_corpus(tmp_path, 12, 1500)
    script = textwrap.dedent("""
        import json, sys, tempfile
        import ray
        from ray.cluster_utils import Cluster
        from genoray.embedding.job import embed_sequences
        from genoray.encoders.kmer import KmerEncoder
        from genoray.config import EmbedConfig
        from genoray.infra.runtime import ray_temp_dir
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False,
                          "object_store_memory": 100 * 2**20, "temp_dir": (ray_temp := ray_temp_dir("rc-"))})
        for _ in range(3 if LOSE_NODE else 2):
            cluster.add_node(num_cpus=1, object_store_memory=100 * 2**20)
        ray.init(address=cluster.address, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        # start units only once both actors are up: otherwise a slow second node start can leave
        # every unit to the first actor, and the test could not tell that both nodes work
        ray.data.DataContext.get_current().wait_for_min_actors_s = 120
        import pathlib, threading, time
        removed = []
        def lose_node():
            while not (done := list(pathlib.Path(sys.argv[1], "shards").glob("*.done.json"))):
                time.sleep(0.02)
            busy = json.loads(done[0].read_text())["ray_node"]  # a node hosting an encoder actor
            victim = next(n for n in cluster.worker_nodes if n.node_id == busy)
            cluster.remove_node(victim, allow_graceful=False)
            removed.append(len(list(pathlib.Path(sys.argv[1], "shards").glob("*.done.json"))))
        if LOSE_NODE:
            threading.Thread(target=lose_node, daemon=True).start()
        rep = embed_sequences(sys.argv[2:], sys.argv[1], KmerEncoder(), use_ray=True,
                              embed_cfg=EmbedConfig(num_actors=2, cpus_per_actor=1.0))
        # 1 CPU per actor on 1-CPU worker nodes (head has none): one actor per node
        import pathlib
        nodes = {json.loads(p.read_text())["worker_pid"] for p in pathlib.Path(sys.argv[1], "shards").glob("*.done.json")}
        print(json.dumps({"written": rep.written, "status": rep.status, "workers": len(nodes),
                          "removed": removed, "alive_nodes": len([n for n in ray.nodes() if n["Alive"]])}))
        ray.shutdown(); cluster.shutdown()
        import shutil; shutil.rmtree(ray_temp, ignore_errors=True)
    """)
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    script = script.replace("LOSE_NODE", str(lose_node))
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "store")] + [str(f) for f in files],
                         capture_output=True, text=True, timeout=240, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    # the last JSON line: Ray may print a raylet error (a lost node's task) to stdout after it
    res = json.loads(next(line for line in reversed(out.stdout.splitlines()) if line.startswith("{")))
    print(res)
    assert res["status"] == "complete" and res["written"] == 18000 and res["alive_nodes"] == 3
    if lose_node:  # 4 nodes started, one removed while units were still to do
        assert len(res["removed"]) == 1 and res["removed"][0] < 12
    assert res["workers"] >= 2  # actors on both worker nodes (and the replacement's) did work
    ids, _ = load_sorted(tmp_path / "store")
    assert len(ids) == len(set(ids)) == 18000


@pytest.mark.chaos
def test_failed_commit_leaves_no_visible_shard_and_retry_is_clean(tmp_path, monkeypatch):
    files = make_corpus(tmp_path, 2, 30)
    real = os.replace
    calls = {"n": 0}

    def flaky(src, dst):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("disk full (injected)")
        return real(src, dst)

    monkeypatch.setattr("genoray.embedding.shards.os.replace", flaky)
    with pytest.raises(OSError, match="injected"):
        embed_sequences(files, tmp_path / "store", KmerEncoder(), use_ray=False)
    shard_dir = tmp_path / "store" / "shards"
    assert not (tmp_path / "store" / "store.json").exists()
    assert not list(shard_dir.glob("*.done.json"))  # nothing half-committed is visible
    rep = embed_sequences(files, tmp_path / "store", KmerEncoder(), use_ray=False)
    assert rep.status == "complete" and rep.written == 60
    listed = {p.file for p in EmbeddingStore(tmp_path / "store").manifest.parts}
    on_disk = {f"shards/{p.name}" for p in shard_dir.glob("*.parquet") if not p.name.endswith(".rejects.parquet")}
    assert on_disk == listed and not list(shard_dir.glob(".*"))


def test_multi_member_gzip_reads_every_record(tmp_path):
    p = tmp_path / "mm.fa.gz"
    with open(p, "wb") as f:
        for part in range(3):
            f.write(gzip.compress(b"".join(b">m%d_%d\nACGTACGT\n" % (part, i) for i in range(1000))))
    rep = embed_sequences(p, tmp_path / "s", KmerEncoder(), use_ray=False)
    assert rep.read == rep.written == 3000


@pytest.mark.ray
def test_errored_blocks_setting_is_refused(ray_session, tmp_path):
    import ray

    ctx = ray.data.DataContext.get_current()
    files = make_corpus(tmp_path, 1, 10)
    ctx.max_errored_blocks = 1
    try:
        with pytest.raises(ValueError, match="max_errored_blocks must be 0"):
            embed_sequences(files, tmp_path / "s", KmerEncoder(), use_ray=True)
    finally:
        ctx.max_errored_blocks = 0


GIANT = """
import sys
from genoray.config import CleanPolicy, ReadConfig
from genoray.sequences import ReadReport, iter_sequences

report, windows, bases = ReadReport(), 0, 0
cfg = ReadConfig(clean=CleanPolicy(max_length=1_000_000, long_records="window"), batch_size=16)
for batch in iter_sequences([sys.argv[1]], cfg, report):
    windows += batch.num_rows
    bases += sum(len(s) for s in batch.column("sequence").to_pylist())
# VmHWM: this process's own peak (ru_maxrss would include the parent's memory at fork)
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(windows, bases, report.windowed, report.rows, hwm // 1024)
"""


@pytest.mark.slow
def test_giant_record_is_windowed_in_bounded_memory(tmp_path):
    """A6: one 250 Mbp record (wrapped FASTA, ~254 MB) is read as 250 windows of 1 Mbp in a
    subprocess whose peak RSS stays far under the plan's 1.2 GB: the windowed FASTA reader
    streams the record line by line and keeps only the bases still needed (~184 MiB measured,
    most of it the interpreter, pyarrow and one 16-window batch)."""
    import subprocess
    import sys

    import numpy as np

    n, width = 250_000_000, 80
    lines = np.frombuffer(b"ACGT", np.uint8)[np.random.default_rng(0).integers(0, 4, n, dtype=np.uint8)]
    lines = np.concatenate([lines.reshape(-1, width), np.full((n // width, 1), ord("\n"), np.uint8)], axis=1)
    path = tmp_path / "chr_giant.fa"
    with open(path, "wb") as f:
        f.write(b">chrG label=giant\n")
        f.write(lines.tobytes())
    del lines
    script = tmp_path / "giant.py"
    script.write_text(GIANT)
    out = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    windows, bases, windowed, rows, peak_mb = map(int, out.stdout.split())
    print(f"250 Mbp record: {windows} windows, peak RSS {peak_mb} MiB")
    assert (windows, bases, windowed, rows) == (250, n, 1, 250)
    assert peak_mb < 400


def test_embed_job_windows_long_records_and_reconciles(tmp_path):
    """The job's counts with windowing: written == accepted - windowed + windows; each window's
    vector equals the encoder's vector for that slice of the record."""
    from genoray.config import CleanPolicy, ReadConfig

    rng = np.random.default_rng(3)
    chrom = "".join(rng.choice(list("ACGT"), size=50_500))
    short = make_corpus(tmp_path, 1, 10)[0]
    long_fa = write_fasta(tmp_path / "chrom.fa", [("chr7 label=a", chrom)])
    cfg = ReadConfig(clean=CleanPolicy(max_length=1000, long_records="window"))
    enc = KmerEncoder()
    rep = embed_sequences([short, long_fa], tmp_path / "store", enc, read_cfg=cfg, use_ray=False).to_dict()
    assert (rep["read"], rep["accepted"], rep["windowed"], rep["windows"], rep["written"]) == (11, 11, 1, 51, 61)
    ids, vecs = load_sorted(tmp_path / "store")
    assert "chr7:50-1049" not in ids and "chr7:49501-50500" in ids and "chr7:1001-2000" in ids
    i = ids.index("chr7:1001-2000")
    np.testing.assert_allclose(vecs[i], enc.embed([chrom[1000:2000]])[0], rtol=1e-6)


@pytest.mark.ray
def test_large_fasta_is_split_into_byte_range_units(ray_session, tmp_path):
    """One uncompressed FASTA becomes several units (cut at record headers) processed by
    different actors; the store equals the unsplit run row for row, and a bad record's reject
    names its byte range."""
    import pyarrow.parquet as pq

    rng = np.random.default_rng(5)
    recs = [(f"r{i} label={'a' if i % 2 else 'b'}", "".join(rng.choice(list("ACGT"), size=rng.integers(50, 300))))
            for i in range(3000)]
    recs[1234] = ("r1234 label=a", "ACGTQQQ")  # rejected: invalid character
    fa = write_fasta(tmp_path / "big.fa", recs)
    split_cfg = EmbedConfig(bytes_per_unit=fa.stat().st_size // 6 + 1, num_actors=2)
    # dispatch units only once both actors are up: under load the first actor could otherwise take
    # every unit before the second starts, and the test could not tell that ranges were shared
    ctx = ray_session.data.DataContext.get_current()
    before, ctx.wait_for_min_actors_s = ctx.wait_for_min_actors_s, 120
    try:
        rep = embed_sequences(fa, tmp_path / "split", KmerEncoder(), embed_cfg=split_cfg, use_ray=True)
    finally:
        ctx.wait_for_min_actors_s = before
    ref = embed_sequences(fa, tmp_path / "whole", KmerEncoder(), use_ray=False)
    assert rep.units == 6 and ref.units == 1
    assert (rep.read, rep.accepted, rep.written) == (ref.read, ref.accepted, ref.written) == (3000, 2999, 2999)
    ids_a, vec_a = load_sorted(tmp_path / "split")
    ids_b, vec_b = load_sorted(tmp_path / "whole")
    assert ids_a == ids_b and np.array_equal(vec_a, vec_b)
    rejects = [pq.read_table(p).to_pylist() for p in (tmp_path / "split" / "shards").glob("*.rejects.parquet")]
    assert len(rejects) == 1 and "[bytes " in rejects[0][0]["path"] and rejects[0][0]["seq_id"] == "r1234"
    done = [json.loads(p.read_text()) for p in (tmp_path / "split" / "shards").glob("*.done.json")]
    assert len({d["worker_pid"] for d in done}) == 2  # both actors got ranges of the one file
