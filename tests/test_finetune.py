"""LoRA fine-tuning baseline on a tiny DNA BERT built offline (a few CPU steps)."""

import numpy as np
import pytest

pytest.importorskip("peft")
from tiny_models import make_char_bert  # noqa: E402

from genoray.evaluation.finetune import LoraClassifier  # noqa: E402


@pytest.mark.slow
def test_lora_learns_a_toy_task_and_only_trains_the_adapter(tmp_path):
    path = make_char_bert(tmp_path / "bert")
    rng = np.random.default_rng(0)
    seqs = ["".join(rng.choice(list("AT"), 30)) for _ in range(40)] + ["".join(rng.choice(list("GC"), 30)) for _ in range(40)]
    labels = ["at"] * 40 + ["gc"] * 40
    clf = LoraClassifier(str(path), r=4, lr=5e-3, epochs=5, batch_size=16).fit(seqs, labels)
    assert clf.steps_ == 25 and clf.trainable_params_ < 20_000
    assert (clf.predict(seqs) == np.array(labels, dtype=object)).mean() > 0.9
    p = clf.predict_proba(seqs[:3])
    assert p.shape == (3, 2) and np.allclose(p.sum(axis=1), 1, atol=1e-5)
