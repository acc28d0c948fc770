"""Shard groups searched in the replica's own process (``ServeConfig.local_groups_mb``,
:func:`genoray.serving.scatter.search_groups`): on a node that holds a group's files the replica
searches it in-process instead of calling its searchers, and the answer must be exactly the
remote scatter's. Real Ray actors of :class:`~genoray.serving.scatter.GenoraySearcher` serve the
remote groups; the oracle is the remote scatter over them (and, for Flat, one index holding every
shard)."""

import numpy as np
import pytest
import s3
from test_serve_groups import build_indexes, queries

s3_server, s3_bucket = s3.s3_server, s3.s3_bucket  # the fixtures of tests/s3.py


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_indexes(tmp_path_factory.mktemp("local-groups"), n=1200)


def _searchers(ray, root, n):
    from genoray.serving.scatter import GenoraySearcher

    return [ray.remote(num_cpus=0.01)(GenoraySearcher).remote(str(root), g, 3600) for g in range(n)]


def _same_hits(a, b) -> None:
    assert np.array_equal(a.sims, b.sims) and np.array_equal(a.gids, b.gids)
    assert a.seq_ids.tolist() == b.seq_ids.tolist() and a.labels.tolist() == b.labels.tolist()


@pytest.mark.ray
@pytest.mark.parametrize("kind", ["flat4", "ivf4"])
def test_local_groups_equal_the_remote_scatter(ray_session, built, tmp_path, kind):
    from genoray.bundle import publish
    from genoray.infra.errors import InvariantError
    from genoray.pipeline import write_bundle
    from genoray.predict.predictor import Predictor
    from genoray.serving.backends import predict_batch
    from genoray.serving.scatter import GroupHolder, GroupIndex, _Batch, scatter, search_groups
    from genoray.serving.service import PredictRequest

    root = tmp_path / "root"
    v1 = write_bundle(root, built[kind], built["head"], shard_groups=[[0], [1, 2, 3]])  # unequal groups
    publish(root, v1)
    searchers = _searchers(ray_session, root, 2)
    remote = GroupHolder(root, 3600, searchers, local_groups_mb=0)
    local = GroupHolder(root, 3600, searchers, local_groups_mb=1024)
    try:
        assert remote.local == {v1: {}} and sorted(local.local[v1]) == [0, 1]  # a local root: every group is here
        assert local.describe()["local_groups"] == [0, 1] and remote.describe()["local_groups"] == []
        predictor, _ = local.snapshot()
        x = np.asarray(predictor.encoder.embed(queries(40)), np.float32)
        for k in (1, 7, 30):
            want = scatter(searchers, v1, x, k, timeout_s=30, retries=1)
            seen: dict[str, str] = {}
            _same_hits(search_groups(searchers, local.local[v1], v1, x, k, 30, 1, seen), want)
            assert seen == {"searcher-0": f"{v1}@local", "searcher-1": f"{v1}@local"}
            half: dict[str, str] = {}  # group 0 here, group 1 through its searcher
            _same_hits(search_groups(searchers, {0: local.local[v1][0]}, v1, x, k, 30, 1, half), want)
            assert half["searcher-0"] == f"{v1}@local" and half["searcher-1"].startswith(f"{v1}@")
            assert half["searcher-1"] != f"{v1}@local"
        if kind == "flat4":  # exact: one index holding every shard
            whole = Predictor.load(built["flat1"], built["head"])
            sims, pos = whole.index.search(x, 7)
            got = search_groups(searchers, local.local[v1], v1, x, 7, 30, 1)
            assert np.allclose(got.sims, sims, atol=1e-6) and got.seq_ids.tolist() == whole.index.ids[pos].tolist()
        reqs = [PredictRequest(sequences=queries(5, seed=s), k=4) for s in range(3)]
        a, b = predict_batch(_Batch(local), reqs), predict_batch(_Batch(remote), reqs)
        strip = lambda out: [{k: v for k, v in r.items() if k != "replica"} for r in out]  # noqa: E731
        assert strip(a) == strip(b) and len(a) == 3 and all(len(r["predictions"]) == 5 for r in a)

        # versions never mix: a group loaded at another version is refused, never merged
        v2 = write_bundle(root, built[kind], built["head"], shard_groups=[[0], [1, 2, 3]])
        with pytest.raises(InvariantError, match=f"searcher-1 searched {v2} for a request at {v1}"):
            search_groups(searchers, {0: local.local[v1][0], 1: GroupIndex(root, v2, 1)}, v1, x, 3, 30, 1)
        publish(root, v2)
        local.load(v2)  # the searchers load v2, then the replica swaps with v2's groups of its own
        assert local.version == v2 and list(local.local) == [v2] and sorted(local.local[v2]) == [0, 1]
        _same_hits(search_groups(searchers, local.local[v2], v2, x, 5, 30, 1), scatter(searchers, v2, x, 5, 30, 1))
    finally:
        remote.close()
        local.close()
        for s in searchers:
            ray_session.kill(s)


def test_local_copy_names_only_what_a_node_holds(built, s3_bucket, tmp_path, monkeypatch):
    """Under a local root every version is on the node; under ``s3://`` only a copy already in
    this node's cache: a replica searches in-process exactly the groups a searcher on its node
    fetched and verified, and fetches no group's files itself."""
    from genoray.bundle import local_copy, publish, version_dir
    from genoray.pipeline import write_bundle
    from genoray.serving.scatter import GroupHolder, GroupIndex, group_files

    assert local_copy(tmp_path / "root", "v1", ["index/manifest.json"]) == tmp_path / "root" / "versions" / "v1"
    root = f"{s3_bucket}/bundles"
    monkeypatch.setenv("GENORAY_CACHE", str(tmp_path / "publisher"))
    v = write_bundle(root, built["ivf4"], built["head"], shard_groups=[[0], [1, 2, 3]])
    publish(root, v)
    monkeypatch.setenv("GENORAY_CACHE", str(tmp_path / "node"))  # a fresh serving node
    files = [group_files(root, v, g)[3] for g in (0, 1)]
    assert [local_copy(root, v, f) for f in files] == [None, None]
    holder = GroupHolder(root, 3600, [None, None], local_groups_mb=1024)
    try:
        assert holder.local == {v: {}}  # nothing of the groups is on this node: every group remote
        assert [local_copy(root, v, f) for f in files] == [None, None]  # and the replica fetched none
    finally:
        holder.close()
    GroupIndex(root, v, 0)  # a searcher of group 0 on this node fetches and verifies its files
    assert local_copy(root, v, files[0]) == version_dir(root, v, files[0]) and local_copy(root, v, files[1]) is None
    holder = GroupHolder(root, 3600, [None, None], local_groups_mb=1024)
    try:
        assert sorted(holder.local[v]) == [0]  # group 0 in-process, group 1 through its searchers
    finally:
        holder.close()


def test_local_groups_within_a_memory_budget(built, tmp_path):
    """A replica searches in-process only the groups whose id rows and quantizer fit
    ``local_groups_mb`` (what it declares to Ray); the others stay with their searchers."""
    from genoray.bundle import current_bundle, publish
    from genoray.config import ServeConfig
    from genoray.index.capacity import RAY_WORKER_BASE, SERVE_EXTRA
    from genoray.pipeline import write_bundle
    from genoray.serving.replica_memory import (
        group_id_bytes,
        grouped_actor_options,
        local_groups_within,
        replica_actor_options,
    )
    from genoray.serving.scatter import GroupHolder

    root = tmp_path / "root"
    v = write_bundle(root, built["ivf4"], built["head"], shard_groups=[[0], [1, 2, 3]])
    publish(root, v)
    index = root / "versions" / v / "index"
    served = current_bundle(root)
    sizes, quantizer = group_id_bytes(str(root), served)
    ids = [(index / f"ids-{i:02d}.arrow").stat().st_size for i in range(4)]
    assert quantizer == (index / "trained.faiss").stat().st_size > 0
    assert sizes == [ids[0], ids[1] + ids[2] + ids[3]]
    just = quantizer + sizes[0]  # group 0 fits, group 1 does not
    assert local_groups_within(sizes, quantizer, just) == ([0], just)
    assert local_groups_within(sizes, quantizer, just - 1) == ([], 0)
    assert local_groups_within(sizes, quantizer, quantizer + sizes[1]) == ([0], just)  # taken in order
    assert local_groups_within(sizes, quantizer, quantizer + sum(sizes)) == ([0, 1], quantizer + sum(sizes))
    for mb, want in ((just / 2**20, [0]), ((just - 1) / 2**20, []), (0, []), (1024, [0, 1])):
        holder = GroupHolder(root, 3600, [None, None], local_groups_mb=mb)
        try:
            assert sorted(holder.local[v]) == want, mb
        finally:
            holder.close()
        cfg = ServeConfig(root=str(root), num_cpus=0.25, local_groups_mb=mb)
        model = grouped_actor_options(cfg, replica_actor_options(cfg, served), served, 2)[0]
        head = sum(p.stat().st_size for p in (root / "versions" / v / "head").rglob("*") if p.is_file())
        assert model["memory"] == RAY_WORKER_BASE + SERVE_EXTRA + head + (quantizer + sum(sizes[g] for g in want)
                                                                          if want else 0)
