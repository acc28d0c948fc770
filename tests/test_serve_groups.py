"""Scatter-gather over shard groups (genoray.serving.scatter): group search and merge against one
whole index (exact oracle for Flat, the same index searched whole for IVF), predictions through
an injected search equal to the local predictor, shard-group planning and bundle records, a
whole group down = 503 naming it, and on a 3-node ``ray.cluster_utils.Cluster`` the grouped
service against the monolithic one under load, a SIGKILLed searcher replica and a swap."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import toy_fasta, toy_records

ROOT = Path(__file__).resolve().parents[1]


def build_indexes(work: Path, n: int = 2000, seed: int = 0) -> dict[str, Path]:
    """A toy store and, over it, Flat and IVF indexes of 4 shards and of 1 shard (the IVF ones
    with the same trained quantizer), and a head."""
    from genoray.config import HeadConfig, IndexConfig
    from genoray.embedding.job import embed_sequences
    from genoray.encoders.kmer import KmerEncoder
    from genoray.index import build_index
    from genoray.pipeline.train import train_head

    work.mkdir(parents=True, exist_ok=True)
    embed_sequences(toy_fasta(work / "toy.fa", n=n, seed=seed), work / "store", KmerEncoder(), use_ray=False)
    out = {k: work / k for k in ("flat4", "flat1", "ivf4", "ivf1", "head")}
    build_index(work / "store", out["flat4"], IndexConfig(index_type="Flat", shards=4))
    build_index(work / "store", out["flat1"], IndexConfig(index_type="Flat", shards=1))
    build_index(work / "store", out["ivf4"], IndexConfig(index_type="IVF16,Flat", shards=4, target_recall=0.9))
    out["ivf1"].mkdir()
    for f in ("trained.faiss", "trained.json"):  # the same quantizer: the monolithic twin of ivf4
        shutil.copy(out["ivf4"] / f, out["ivf1"] / f)
    build_index(work / "store", out["ivf1"], IndexConfig(index_type="IVF16,Flat", shards=1, target_recall=0.9))
    train_head(work / "store", out["flat1"], out["head"], HeadConfig(k=10, C=1.0))
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_indexes(tmp_path_factory.mktemp("groups"))


def queries(n: int = 40, seed: int = 7) -> list[str]:
    return [s for _, s in toy_records(n, seed=seed, prefix="q")]


def group_search(root, version, n_groups):
    from genoray.index.knn import merge_topk
    from genoray.predict import Hits
    from genoray.serving.scatter import GroupIndex

    groups = [GroupIndex(root, version, g) for g in range(n_groups)]

    def search(x, k):  # the one merge every sharded search uses
        parts = [g.search(x, k) for g in groups]
        sims, gids, (seq_ids, labels) = merge_topk([p["sims"] for p in parts], [p["gids"] for p in parts], k,
                                                   [[p["seq_ids"] for p in parts], [p["labels"] for p in parts]])
        return Hits(sims, gids, seq_ids, labels)

    return groups, search


def test_group_search_equals_whole_index_and_exact_oracle(built, tmp_path):
    from genoray.embedding.store import EmbeddingStore
    from genoray.index import VectorIndex, exact_search, recall_at_k
    from genoray.infra.artifacts import read_json
    from genoray.pipeline import write_bundle

    base = EmbeddingStore(built["flat4"].parent / "store")
    rng = np.random.default_rng(3)
    for name in ("flat4", "ivf4"):
        v = write_bundle(tmp_path / "root", built[name], built["head"], shard_groups=2)
        assert read_json(tmp_path / "root" / "versions" / v / "bundle.json")["shard_groups"] == [[0, 1], [2, 3]]
        groups, search = group_search(tmp_path / "root", v, 2)
        assert sum(len(g.gids) for g in groups) == VectorIndex.load(built[name]).ntotal
        assert not set(groups[0].gids) & set(groups[1].gids)  # each replica holds only its group's rows
        # its seq_ids and labels stay in the mapped id tables (one chunk per shard): no copy of its own
        assert all(g.seq_ids.array.num_chunks == g.labels.array.num_chunks == 2 for g in groups)
        whole = VectorIndex.load(built[name])
        q = rng.standard_normal((60, whole.dim)).astype(np.float32)
        hits = search(q, 10)
        sims, pos = whole.search(q, 10)
        assert np.array_equal(hits.gids, pos) and np.allclose(hits.sims, sims, atol=1e-6)
        assert np.array_equal(hits.seq_ids, whole.ids[pos]) and np.array_equal(hits.labels, whole.labels[pos])
        mono = VectorIndex.load(built[name.replace("4", "1")])
        assert np.array_equal(mono.search(q, 10)[1], pos)  # the one-shard index of the same rows
        if name == "flat4":  # exact oracle: brute force over the store's train rows
            emb = base.load(split="train")
            _, truth = exact_search(emb.vectors, q, 10)
            assert np.array_equal(np.asarray(emb.ids, dtype=object)[truth], hits.seq_ids)
        else:
            print("IVF recall@10 grouped vs whole:", recall_at_k(hits.gids, pos))


def test_a_group_whose_shards_are_out_of_gid_order_answers_the_same(built, tmp_path, monkeypatch):
    """A group's id tables stay mapped and only its gids are sorted: with its shards read in reverse
    (gids out of order: the sort-order path) every search answers as with them in order."""
    import genoray.serving.searcher as searcher
    from genoray.pipeline import write_bundle

    v = write_bundle(tmp_path / "root", built["ivf4"], built["head"], shard_groups=2)
    groups, search = group_search(tmp_path / "root", v, 2)
    assert all(g.order is None for g in groups)
    opened = searcher.open_shards

    def reversed_shards(*args, **kwargs):
        indexes, tables, refine = opened(*args, **kwargs)
        return indexes[::-1], tables[::-1], refine[::-1]

    monkeypatch.setattr(searcher, "open_shards", reversed_shards)
    flipped, flipped_search = group_search(tmp_path / "root", v, 2)
    assert all(g.order is not None for g in flipped)
    q = np.random.default_rng(5).standard_normal((30, groups[0].index.dim)).astype(np.float32)
    a, b = search(q, 10), flipped_search(q, 10)
    assert np.array_equal(a.gids, b.gids) and np.allclose(a.sims, b.sims, atol=1e-6)
    assert np.array_equal(a.seq_ids, b.seq_ids) and np.array_equal(a.labels, b.labels)


def test_predictions_through_groups_equal_the_local_predictor(built, tmp_path):
    from genoray.bundle import publish
    from genoray.pipeline import write_bundle
    from genoray.predict.predictor import Predictor

    root = tmp_path / "root"
    v = write_bundle(root, built["flat4"], built["head"], shard_groups=[[0, 3], [1, 2]])
    publish(root, v)
    vdir = root / "versions" / v
    full = Predictor.load(vdir / "index", vdir / "head")
    lite = Predictor.load(vdir / "index", vdir / "head", with_index=False)
    assert lite.index is None
    _, search = group_search(root, v, 2)
    seqs = queries()
    assert [p.to_dict() for p in full.predict(seqs, k=5)] == [p.to_dict() for p in lite.predict(seqs, k=5, search=search)]
    ids = [str(i) for i in full.index.ids[:8]]  # indexed ids: a query never votes for itself
    seqs8 = seqs[:8]
    a = [p.to_dict() for p in full.predict(seqs8, ids=ids, k=12)]
    b = [p.to_dict() for p in lite.predict(seqs8, ids=ids, k=12, search=search)]
    assert a == b and all(len(p["neighbours"]) == 12 for p in b)


def test_shard_groups_plan_and_bundle_record(built, tmp_path):
    from genoray.bundle import current_bundle, groups_of
    from genoray.bundle.groups import shard_groups
    from genoray.index.capacity import replica_bytes, shard_sizes
    from genoray.infra.artifacts import read_json
    from genoray.pipeline import write_bundle

    def served_groups(root):
        return len(groups_of(current_bundle(root)) or [[]])

    assert shard_groups(built["flat4"], 2) == [[0, 1], [2, 3]]
    assert shard_groups(built["flat4"], 3) in ([[0, 1], [2], [3]], [[0], [1, 2], [3]], [[0], [1], [2, 3]])
    assert shard_groups(built["flat4"], 4) == [[0], [1], [2], [3]]
    assert shard_groups(built["flat4"], [[3, 1], [0, 2]]) == [[3, 1], [0, 2]]
    for bad in (5, 0, [[0, 1], [1, 2, 3]], [[0, 1]], [[0, 1, 2, 3], []]):
        with pytest.raises(ValueError):
            shard_groups(built["flat4"], bad)
    shards, shared = shard_sizes(built["flat4"])
    assert shared == 0 and len(shards) == 4

    def need(group):  # one searcher replica holding these shards in its memory
        return replica_bytes([shards[i] for i in group], shared, 0, 1, mmap=False)

    assert shard_groups(built["flat4"], memory_budget=need([0, 1, 2, 3])) == [[0, 1, 2, 3]]
    assert shard_groups(built["flat4"], memory_budget=max(need([0, 1]), need([2, 3]))) == [[0, 1], [2, 3]]
    with pytest.raises(ValueError, match="over the budget"):
        shard_groups(built["flat4"], memory_budget=need([]))
    root = tmp_path / "root"
    v = write_bundle(root, built["flat4"], built["head"])  # no groups: the JSON has no key (older readers)
    assert "shard_groups" not in read_json(root / "versions" / v / "bundle.json")
    from genoray.bundle import publish

    publish(root, v)
    assert served_groups(root) == 1
    publish(root, write_bundle(root, built["flat4"], built["head"], shard_groups=2))
    assert served_groups(root) == 2


class _Dead:
    """A searcher handle whose every replica is dead (what Serve raises for a killed actor)."""

    def __init__(self, error):
        self.calls, self.error = 0, error
        self.search = self

    def remote(self, *args):
        self.calls += 1
        return self

    def result(self, timeout_s=None):
        raise self.error

    def __await__(self):  # awaited like a DeploymentResponse
        return self._answer().__await__()

    async def _answer(self):
        return self.result()

    def cancel(self):
        pass


class _Live:
    def __init__(self, group, version):
        self.group, self.version = group, version
        self.search = self

    def remote(self, x, k, version):
        self.args = (x, k, version)
        return self

    def __await__(self):  # awaited like a DeploymentResponse
        return self._answer().__await__()

    async def _answer(self):
        return self.result()

    def result(self, timeout_s=None):
        x, k, version = self.args
        gids = np.arange(k)[None, :].repeat(len(x), 0) * 2 + self.group
        return {"sims": np.full(gids.shape, 0.5, np.float32) - gids / 100, "gids": gids, "version": self.version,
                "seq_ids": gids.astype(str).astype(object), "labels": np.full(gids.shape, "gc", object),
                "replica": f"r{self.group}"}


def test_whole_group_down_is_503_naming_it_and_versions_never_mix():
    from ray.exceptions import ActorDiedError

    from genoray.infra.errors import InvariantError
    from genoray.serving.scatter import GroupUnavailable, scatter

    x = np.zeros((2, 4), np.float32)
    seen: dict[str, str] = {}
    hits = scatter([_Live(0, "v1"), _Live(1, "v1")], "v1", x, 3, timeout_s=5, retries=2, seen=seen)
    assert hits.gids.tolist() == [[0, 1, 2]] * 2  # merged: larger similarity first, ties by gid
    assert seen == {"searcher-0": "v1@r0", "searcher-1": "v1@r1"}
    dead = _Dead(ActorDiedError())
    with pytest.raises(GroupUnavailable, match=r"shard group 1 \(searcher-1\)"):
        scatter([_Live(0, "v1"), dead], "v1", x, 3, timeout_s=5, retries=2)
    assert dead.calls == 3  # tried, then retried twice on another replica of its group
    with pytest.raises(GroupUnavailable, match="did not answer within"):
        scatter([_Dead(TimeoutError()), _Live(1, "v1")], "v1", x, 3, timeout_s=1, retries=2)
    with pytest.raises(InvariantError, match="searched v2 for a request at v1"):
        scatter([_Live(0, "v1"), _Live(1, "v2")], "v1", x, 3, timeout_s=5, retries=2)


@pytest.mark.ray
@pytest.mark.chaos
@pytest.mark.timeout(900)
def test_grouped_service_on_a_3_node_cluster(tmp_path):
    """4 shards in 2 groups on 3 nodes against the monolithic service in the same run."""
    # a short temp dir of its own: Ray's socket paths under it must stay within AF_UNIX's 107 bytes
    short = tempfile.mkdtemp(prefix="g", dir="/tmp" if os.path.isdir("/tmp") else None)
    env = dict(os.environ, RAY_AUTH_MODE="disabled", TMPDIR=short,
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH")])))
    try:
        out = subprocess.run([sys.executable, str(ROOT / "tests" / "groups_cluster.py"), str(tmp_path)],
                             capture_output=True, text=True, timeout=840, env=env, check=False)
    finally:
        shutil.rmtree(short, ignore_errors=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(res, indent=1))
    assert len(res["nodes_with_searchers"]) >= 2  # the groups' replicas spread over the worker nodes
    assert res["flat_same_as_mono"] == res["flat_queries"] and res["flat_same_as_oracle"] == res["flat_queries"]
    assert abs(res["ivf_recall_grouped"] - res["ivf_recall_mono"]) <= 0.005
    kill = res["kill"]
    assert kill["killed_pid"] and kill["killed_served"] and kill["failed"] == 0 and kill["wrong"] == 0
    assert kill["requests"] > 100 and res["mono"]["failed"] == 0 and res["mono"]["wrong"] == 0
    swap = res["swap"]
    assert swap["failed"] == 0 and swap["wrong"] == 0 and swap["mixed"] == 0
    assert set(swap["versions"]) == {res["v1"], res["v2"]} and swap["last_version"] == res["v2"]
    assert all(status == 503 and "shard group 1 (searcher-1) cannot search" in body and "ChecksumError" in body
               for status, body in res["group_down"]), res["group_down"]


def test_publish_cli_records_shard_groups(built, tmp_path):
    from genoray import cli
    from genoray.bundle import current_version
    from genoray.index.capacity import replica_bytes, shard_sizes
    from genoray.infra.artifacts import read_json

    root = tmp_path / "root"
    assert cli.main(["publish", str(root), "--index", str(built["ivf4"]), "--head", str(built["head"]),
                     "--shard-groups", "2"]) == 0
    doc = read_json(root / "versions" / current_version(root) / "bundle.json")
    assert doc["shard_groups"] == [[0, 1], [2, 3]]
    shards, shared = shard_sizes(built["ivf4"])
    assert shared > 0  # IVF shards share one quantizer: each searcher replica holds it once
    budget = (max(replica_bytes(shards[:2], shared, 0, 1, mmap=False),
                  replica_bytes(shards[2:], shared, 0, 1, mmap=False)) + 1) / 2**20
    assert cli.main(["publish", str(root), "--index", str(built["ivf4"]), "--head", str(built["head"]),
                     "--group-memory-mb", f"{budget:.6f}"]) == 0
    assert read_json(root / "versions" / current_version(root) / "bundle.json")["shard_groups"] == [[0, 1], [2, 3]]
    assert cli.main(["publish", str(root), "--index", str(built["ivf4"]), "--head", str(built["head"]),
                     "--shard-groups", "9"]) == 2  # more groups than shards: a usage error naming the index


def test_grouped_replicas_declare_their_own_memory(built, tmp_path):
    """Each ``searcher-<g>`` declares the process, its group's id rows and the shared quantizer in
    full plus its group's shard files shared by the replicas of a node; the model declares the
    process and the head, plus the id rows and quantizer of the groups it may search in-process
    (``local_groups_mb``). Sizes are summed here from the files of the group layout."""
    from genoray.bundle import current_bundle, publish
    from genoray.config import ServeConfig
    from genoray.index.capacity import RAY_WORKER_BASE, SERVE_EXTRA
    from genoray.infra.artifacts import read_json
    from genoray.pipeline import write_bundle
    from genoray.serving.replica_memory import grouped_actor_options, replica_actor_options
    from genoray.serving.scatter import group_model

    root = tmp_path / "root"
    v = write_bundle(root, built["ivf4"], built["head"], shard_groups=[[0], [1, 2, 3]])  # unequal groups
    publish(root, v)
    vdir = root / "versions" / v
    shards = read_json(vdir / "index" / "manifest.json")["shards"]
    size = lambda name: os.path.getsize(vdir / "index" / name)  # noqa: E731
    quantizer = size("trained.faiss")
    head = sum(os.path.getsize(p) for p in (vdir / "head").rglob("*") if p.is_file())
    assert quantizer > 0 and head > 0
    expected = []
    for group in ([0], [1, 2, 3]):
        shard_files = sum(size(f) for i in group for f in shards[i]["sha256"] if not f.startswith("ids-"))
        ids = sum(size(f"ids-{i:02d}.arrow") for i in group)
        expected.append(int(RAY_WORKER_BASE + SERVE_EXTRA + quantizer + ids + shard_files / 4))
    cfg = ServeConfig(root=str(root), max_replicas=4, num_cpus=0.25)
    served = current_bundle(root)
    opts = replica_actor_options(cfg, served)
    model, searchers = grouped_actor_options(cfg, opts, served, 2)
    ids_all = sum(size(f"ids-{i:02d}.arrow") for i in range(4))  # the groups it may search in-process (1024 MB)
    assert model == {"num_cpus": 0.25, "memory": RAY_WORKER_BASE + SERVE_EXTRA + head + quantizer + ids_all}
    remote_only = ServeConfig(root=str(root), max_replicas=4, num_cpus=0.25, local_groups_mb=0)
    assert grouped_actor_options(remote_only, opts, served, 2)[0]["memory"] == RAY_WORKER_BASE + SERVE_EXTRA + head
    assert [s["memory"] for s in searchers] == expected and all(s["num_cpus"] == 0.25 for s in searchers)
    assert searchers[1]["memory"] > searchers[0]["memory"]  # three shards' files and rows against one
    assert sum(s["memory"] for s in searchers) < 2 * opts["memory"]  # no longer each the whole bundle's share
    app = group_model(cfg, {"ray_actor_options": opts}, served)  # what `genoray serve` deploys
    d = app._bound_deployment
    assert d.ray_actor_options["memory"] == model["memory"]
    assert [(a._bound_deployment.name, a._bound_deployment.ray_actor_options["memory"]) for a in d.init_args[2:]] == \
        [("searcher-0", expected[0]), ("searcher-1", expected[1])]
    fixed = ServeConfig(root=str(root), replica_memory_mb=512)  # an explicit size applies to every part
    fixed_opts = replica_actor_options(fixed, served)
    assert grouped_actor_options(fixed, fixed_opts, served, 2) == (fixed_opts, [fixed_opts, fixed_opts])
    with pytest.raises(ValueError, match="2 shard groups, serving 3"):
        grouped_actor_options(cfg, opts, served, 3)


@pytest.mark.ray
@pytest.mark.chaos
@pytest.mark.timeout(420)
def test_grouped_bundle_through_haproxy(tmp_path):
    """A 2-group bundle served by ``ingress="auto"``, i.e. HAProxy in front of direct-ingress
    replicas that scatter to the searcher deployments: every answer equals one process holding
    every shard, a SIGKILLed searcher replica under load costs no request, and a whole group
    down is a 503 naming it."""
    from genoray.infra.ports import free_port

    short = tempfile.mkdtemp(prefix="g", dir="/tmp" if os.path.isdir("/tmp") else None)  # AF_UNIX path limit
    env = dict(os.environ, RAY_AUTH_MODE="disabled", TMPDIR=short,
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH")])))
    env.pop("RAY_ADDRESS", None)
    try:
        out = subprocess.run([sys.executable, str(ROOT / "tests" / "groups_haproxy.py"), str(tmp_path),
                              *(str(free_port()) for _ in range(3))],
                             capture_output=True, text=True, timeout=400, env=env, check=False)
    finally:
        shutil.rmtree(short, ignore_errors=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, out.stdout[-3000:] + out.stderr[-6000:]
    res = json.loads(lines[-1][7:])
    print(json.dumps(res, indent=1))
    assert res["ingress"] == "haproxy"
    assert res["statuses"] == [200] and res["same_as_oracle"] == res["queries"] == 24
    assert all(f"searcher-0={res['v1']}@" in h and f"searcher-1={res['v1']}@" in h for h in res["headers"])
    assert res["info_shard_groups"] == 2
    load = res["load"]
    assert load["killed_pid"] and load["requests"] > 50 and load["failed"] == 0 and load["wrong"] == 0
    assert len(res["killed_searchers"]) == 2, res["killed_searchers"]
    assert all(status == 503 and "shard group 1 (searcher-1) cannot search" in body and "ChecksumError" in body
               for status, body, _ in res["group_down"]), res["group_down"]



@pytest.mark.parametrize("grouped", [False, True], ids=["one-group", "grouped"])
def test_both_haproxy_apps_take_client_addresses_from_haproxy(built, tmp_path, monkeypatch, grouped):
    """Behind HAProxy every TCP peer is HAProxy, so the failed-key lockout needs the address
    HAProxy forwards: the grouped replicas' API took the TCP peer (the two apps were written in
    parallel), and one guessing client would have locked every client of a grouped bundle out."""
    import genoray.serving.app as app_mod
    from genoray.bundle import current_bundle, publish
    from genoray.config import ServeConfig
    from genoray.pipeline import write_bundle

    root = tmp_path / "root"
    publish(root, write_bundle(root, built["ivf4"], built["head"], **({"shard_groups": 2} if grouped else {})))
    made: list[dict] = []
    real = app_mod.create_app
    monkeypatch.setattr(app_mod, "create_app", lambda *a, **kw: made.append(kw) or real(*a, **kw))
    cfg = ServeConfig(root=str(root), ingress="haproxy", require_key=True, key_hashes=("0" * 64,))
    app = app_mod.build_app(cfg, current_bundle(root))
    assert app._bound_deployment.name == "GenorayReplica"
    assert [kw.get("behind_haproxy") for kw in made] == [True]
