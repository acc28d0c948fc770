"""The embedding job's actor pool: elastic (min/max actors) gives the same store as a fixed pool."""

import numpy as np
import pytest
from bundles import toy_fasta

from genoray.config import EmbedConfig
from genoray.embedding.job import embed_sequences
from genoray.embedding.store import EmbeddingStore
from genoray.encoders.kmer import KmerEncoder

pytestmark = [pytest.mark.ray]


def test_elastic_pool_matches_fixed_pool(ray_session, tmp_path):
    files = [toy_fasta(tmp_path / f"f{i}.fa", n=40, seed=i) for i in range(3)]
    for i, f in enumerate(files):  # distinct ids across files
        f.write_text(f.read_text().replace(">s", f">f{i}_s"))
    fixed = embed_sequences(files, tmp_path / "fixed", KmerEncoder(), embed_cfg=EmbedConfig(num_actors=1))
    elastic = embed_sequences(files, tmp_path / "elastic", KmerEncoder(),
                              embed_cfg=EmbedConfig(num_actors=1, max_actors=3))
    assert fixed.written == elastic.written == 120 and elastic.units == 3
    a, b = EmbeddingStore(tmp_path / "fixed").load(None), EmbeddingStore(tmp_path / "elastic").load(None)
    oa, ob = np.argsort(a.ids), np.argsort(b.ids)
    assert list(a.ids[oa]) == list(b.ids[ob]) and np.array_equal(a.vectors[oa], b.vectors[ob])
