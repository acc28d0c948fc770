"""Memory-mapped serving (#13 item 1): mapped index and id tables, verification once per node,
the memory replicas declare, and HAProxy's listeners bound to the service host."""

import os
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from bundles import make_bundle

from genoray.infra.artifacts import ChecksumError, read_json, sha256_file, write_json


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    base = tmp_path_factory.mktemp("mmap")
    v = make_bundle(base / "w", base / "root", k=5, seed=1)
    return base / "root", v


@pytest.fixture
def count_hashes(monkeypatch):
    """Files hashed by ``verify_files`` (it hashes through ``fs.sha256``, local or object storage;
    the head's, OOD scorer's and length calibration's own checks of their files are not counted)."""
    import genoray.infra.fs as fs

    seen: list[str] = []
    real = fs.sha256

    def counting(p, *a, **k):
        seen.append(Path(p).name)
        return real(p, *a, **k)

    monkeypatch.setattr(fs, "sha256", counting)
    return seen


def _sequences(n=40, seed=3):
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(list("ACGT"), 60)) for _ in range(n)]


def test_index_memory_mapped_equals_index_in_ram(tmp_path):
    from genoray.index import VectorIndex

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 16)).astype(np.float32)
    VectorIndex.from_vectors(x, [f"id{i}" for i in range(3000)], ["a" if v > 0 else "b" for v in x[:, 0]]).save(tmp_path / "ix")
    assert (tmp_path / "ix" / "ids-00.arrow").is_file()
    before = pa.total_allocated_bytes()
    ram = VectorIndex.load(tmp_path / "ix")
    in_pool = pa.total_allocated_bytes() - before
    before = pa.total_allocated_bytes()
    mapped = VectorIndex.load(tmp_path / "ix", mmap=True)
    # mapped, the id table is the file's pages, not a copy in Arrow's memory pool
    assert in_pool >= ram.ids.array.nbytes + ram.labels.array.nbytes > 30_000
    assert pa.total_allocated_bytes() - before < 4096
    q = rng.standard_normal((50, 16)).astype(np.float32)
    s1, p1 = ram.search(q, 10)
    s2, p2 = mapped.search(q, 10)
    assert np.array_equal(p1, p2) and np.array_equal(s1, s2)
    assert list(ram.ids[p1].ravel()) == list(mapped.ids[p2].ravel())
    assert list(mapped.labels[p2[0]]) == [("a" if x[i, 0] > 0 else "b") for i in p1[0]]


def test_older_parquet_id_tables_still_load(tmp_path):
    """Format 3 indexes wrote ids-XX.parquet; they load unchanged (mapped or not)."""
    from genoray.index import VectorIndex

    x = np.random.default_rng(1).standard_normal((500, 8)).astype(np.float32)
    VectorIndex.from_vectors(x, [f"id{i}" for i in range(500)], ["c"] * 500).save(tmp_path / "ix")
    ix = tmp_path / "ix"
    t = pa.ipc.open_file(pa.memory_map(str(ix / "ids-00.arrow"))).read_all()
    pq.write_table(t, ix / "ids-00.parquet")
    (ix / "ids-00.arrow").unlink()
    m = read_json(ix / "manifest.json")
    m["format_version"] = 3
    s = m["shards"][0]
    s["ids"] = "ids-00.parquet"
    s["sha256"] = {s["index"]: s["sha256"][s["index"]], "ids-00.parquet": sha256_file(ix / "ids-00.parquet")}
    write_json(ix / "manifest.json", m)
    for mmap in (False, True):
        v = VectorIndex.load(ix, mmap=mmap)
        _, pos = v.search(x[:5], 1)
        assert [v.ids[p] for p in pos[:, 0]] == [f"id{i}" for i in range(5)]


def test_bundle_mmap_predictions_identical_and_verified_once_per_node(bundle, count_hashes, monkeypatch, tmp_path):
    from genoray.bundle.store import verified_record
    from genoray.predict import Predictor

    root, v = bundle
    monkeypatch.setenv("GENORAY_CACHE", str(tmp_path / "node"))
    vdir = root / "versions" / v
    n_files = len(read_json(vdir / "bundle.json")["files"])
    ram, _ = Predictor.from_bundle(root, mmap=False)
    # each bundle file hashed once (the index loader does not hash the index files again)
    assert sorted(count_hashes) == sorted(Path(f).name for f in read_json(vdir / "bundle.json")["files"])
    assert len(count_hashes) == n_files and verified_record(vdir).is_file()
    count_hashes.clear()
    mapped, _ = Predictor.from_bundle(root, mmap=True)  # a second replica on this node
    assert count_hashes == []
    seqs = _sequences()
    a = [p.to_dict() for p in ram.predict(seqs, k=5)]
    b = [p.to_dict() for p in mapped.predict(seqs, k=5)]
    assert a == b


def test_changed_file_is_hashed_again_and_refused(tmp_path, monkeypatch):
    from genoray.predict import Predictor

    monkeypatch.setenv("GENORAY_CACHE", str(tmp_path / "node"))
    v = make_bundle(tmp_path / "w", tmp_path / "r", k=5)
    Predictor.from_bundle(tmp_path / "r")  # verified and recorded
    shard = tmp_path / "r" / "versions" / v / "index" / "shard-00.faiss"
    shard.chmod(0o644)
    data = bytearray(shard.read_bytes())
    data[-50] ^= 0xFF
    shard.write_bytes(bytes(data))  # new mtime: the record no longer matches
    with pytest.raises(ChecksumError, match="shard-00.faiss"):
        Predictor.from_bundle(tmp_path / "r", mmap=True)


def test_replica_memory_declared_from_the_bundle(bundle):
    from genoray.config import ServeConfig
    from genoray.index.capacity import RAY_WORKER_BASE, SERVE_EXTRA, shard_sizes
    from genoray.bundle import current_bundle
    from genoray.serving.replica_memory import replica_actor_options, replica_memory_bytes

    root, v = bundle
    vdir = root / "versions" / v
    index_files = [p for p in (vdir / "index").iterdir() if p.name.startswith(("shard-", "ids-", "refine-"))]
    head_files = [p for p in (vdir / "head").iterdir()]
    mapped = sum(p.stat().st_size for p in index_files)
    shared = read_json(vdir / "index" / "manifest.json").get("shared_quantizer")  # IVF: one quantizer, in RAM
    resident = sum(p.stat().st_size for p in head_files) + ((vdir / "index" / "trained.faiss").stat().st_size if shared else 0)
    shards, quantizer = shard_sizes(vdir / "index")  # the plan's, the groups' and the replicas' one measure
    assert sum(sh.mapped + sh.ids for sh in shards) == mapped and quantizer == resident - sum(
        p.stat().st_size for p in head_files)
    base = RAY_WORKER_BASE + SERVE_EXTRA + resident
    assert replica_memory_bytes(vdir, mmap=False, replicas_per_node=4) == base + mapped
    assert replica_memory_bytes(vdir, mmap=True, replicas_per_node=4) == int(base + mapped / 4)
    served = current_bundle(root)
    opts = replica_actor_options(ServeConfig(root=str(root), max_replicas=4, num_cpus=0.25), served)
    assert opts == {"num_cpus": 0.25, "memory": int(base + mapped / 4)}
    assert replica_actor_options(ServeConfig(root=str(root), replica_memory_mb=512), served)["memory"] == 512 * 2**20
    assert current_bundle(root / "nothing-published") is None
    assert "memory" not in replica_actor_options(ServeConfig(root=str(root / "nothing-published")), None)


def test_haproxy_stats_and_metrics_bound_to_the_service_host(tmp_path, monkeypatch):
    """The wrapper rewrites Ray's ``bind *:PORT`` / ``bind :PORT`` to the frontend's host and
    runs the real HAProxy (here in check mode, which parses the rewritten file)."""
    from genoray.serving.haproxy import haproxy_env

    monkeypatch.setenv("GENORAY_CACHE", str(tmp_path / "cache"))
    env = haproxy_env(stats_port=18404, metrics_port=19101)
    wrapper = env["RAY_SERVE_HAPROXY_BINARY_PATH"]
    assert os.access(wrapper, os.X_OK)
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text("global\n    maxconn 100\ndefaults\n    mode http\n    timeout connect 5s\n"
                   "    timeout client 5s\n    timeout server 5s\n"
                   "frontend prometheus\n    bind :19101\n    http-request use-service prometheus-exporter\n"
                   "frontend http_frontend\n    bind 127.0.0.1:18000\n    default_backend b\n"
                   "backend b\n    server s1 127.0.0.1:18001\n"
                   "listen stats\n  bind *:18404\n  stats enable\n  stats uri /stats\n")
    out = subprocess.run([wrapper, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    binds = [line.strip() for line in cfg.read_text().splitlines() if line.strip().startswith("bind")]
    assert binds == ["bind 127.0.0.1:19101", "bind 127.0.0.1:18000", "bind 127.0.0.1:18404"]


def test_mapped_flat_shard_is_read_into_the_page_cache_first(tmp_path):
    """FAISS maps a Flat shard with MADV_RANDOM (a cold page is read 4 KiB per fault, and a Flat
    search touches every page): ``read_shard`` reads it through once first, so a mapped load of
    an evicted file leaves all of it in the page cache (without it: a few header pages)."""
    import shutil

    from genoray.index import VectorIndex
    from genoray.index.core import read_shard

    if not shutil.which("fincore") or not hasattr(os, "posix_fadvise"):
        pytest.skip("needs util-linux fincore and posix_fadvise")
    x = np.random.default_rng(2).standard_normal((4000, 64)).astype(np.float32)
    VectorIndex.from_vectors(x, [f"id{i}" for i in range(4000)], ["a"] * 4000).save(tmp_path / "ix")
    shard = tmp_path / "ix" / "shard-00.faiss"
    assert read_json(tmp_path / "ix" / "manifest.json")["factory"] == "Flat"

    def resident() -> int:
        out = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "-o", "RES", str(shard)],
                             capture_output=True, text=True, check=True).stdout
        return int(out.split()[0])

    def evict() -> None:
        fd = os.open(shard, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)

    evict()
    if resident():
        pytest.skip(f"{shard}: this file system keeps evicted pages (tmpfs?)")
    index = read_shard(shard, "Flat", mmap=True)
    page = os.sysconf("SC_PAGE_SIZE")
    assert resident() == -(-shard.stat().st_size // page) * page > 1_000_000  # every page of it
    assert index.ntotal == 4000 and index.search(x[:3] / np.linalg.norm(x[:3], axis=1, keepdims=True), 1)[1][:, 0].tolist() == [0, 1, 2]
