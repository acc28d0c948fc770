"""genoray convert-weights: pickle checkpoints become safetensors via torch's weights-only
unpickler only; anything else is refused with the reason and never executed."""

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from conftest import malicious_pickle
from tiny_models import make_char_bert

from genoray.cli import main
from genoray.config import HFConfig
from genoray.encoders import encoder_from_spec
from genoray.encoders.hf import HFEncoder
from genoray.encoders.weights import UnsafeCheckpointError, convert_weights

HYENA_WEIGHTS_SHA256 = "513b2fa45c4916b67d5c2c4ed0ca43b559e9ff17ba512203f9667b9458b14019"


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return make_char_bert(tmp_path_factory.mktemp("bert") / "tiny-dna-bert")


def _pickled_copy(bert_dir, dst):
    from safetensors.torch import load_file

    shutil.copytree(bert_dir, dst)
    state = load_file(str(dst / "model.safetensors"))
    (dst / "model.safetensors").unlink()
    torch.save(state, dst / "pytorch_model.bin")  # what many hub checkpoints ship
    return dst


@pytest.mark.parametrize("protocol", [2, None])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, bert_dir, capsys, protocol):
    import pickle

    from conftest import Sentinel

    src, sentinel = tmp_path / "evil", tmp_path / "PWNED"
    shutil.copytree(bert_dir, src)
    (src / "model.safetensors").unlink()
    malicious_pickle(src / "pytorch_model.bin", sentinel)
    if protocol is not None:  # GLOBAL opcode: refused as an unsupported global, named
        (src / "pytorch_model.bin").write_bytes(pickle.dumps(Sentinel(sentinel), protocol=protocol))
    reason = "Unsupported global.*open" if protocol else "Unsupported operand"
    with pytest.raises(UnsafeCheckpointError, match="refused by the weights-only unpickler: " + reason):
        convert_weights(src, tmp_path / "out")
    assert not sentinel.exists()
    assert not (tmp_path / "out" / "model.safetensors").exists()
    assert main(["convert-weights", str(src), str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err
    assert "genoray convert-weights: error:" in err and "weights-only" in err and "Traceback" not in err
    assert not sentinel.exists()


def test_converted_checkpoint_loads_identically_and_pins_its_sha(tmp_path, bert_dir, capsys):
    src = _pickled_copy(bert_dir, tmp_path / "pickled")
    with pytest.raises(OSError, match="safetensors"):
        HFEncoder(HFConfig(model=str(src)))  # the encoder itself still refuses the pickle
    dst = tmp_path / "converted"
    assert main(["convert-weights", str(src), str(dst)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert sorted(p.name for p in dst.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json",
                                                     "tokenizer_config.json"]
    assert report["tensors"] > 0 and report["dtypes"] == ["float32"]
    enc = HFEncoder(HFConfig(model=str(dst)))
    assert enc.spec()["weights_sha256"] == report["weights_sha256"]
    seqs = ["ACGTACGTTTGA", "GGGCCCAAAT" * 3]
    assert np.array_equal(enc.embed(seqs), HFEncoder(HFConfig(model=str(bert_dir))).embed(seqs))
    assert encoder_from_spec(enc.spec()).spec() == enc.spec()
    with pytest.raises(FileExistsError, match="already holds weights"):
        convert_weights(src, dst)
    # deterministic: converting again gives the same file, so a pinned spec accepts a re-conversion
    assert convert_weights(src, tmp_path / "again")["weights_sha256"] == report["weights_sha256"]


def test_not_a_state_dict_and_missing_checkpoint_are_refused(tmp_path):
    src = tmp_path / "m"
    src.mkdir()
    with pytest.raises(FileNotFoundError, match="no pytorch_model.bin"):
        convert_weights(src, tmp_path / "o")
    torch.save([torch.zeros(2)], src / "pytorch_model.bin")  # loads under weights_only, but not weights
    with pytest.raises(UnsafeCheckpointError, match="not a state dict"):
        convert_weights(src, tmp_path / "o")
    torch.save({"w": torch.zeros(2), "step": 3}, src / "pytorch_model.bin")
    with pytest.raises(UnsafeCheckpointError, match="not tensors.*step"):
        convert_weights(src, tmp_path / "o")


def test_shared_storage_is_copied_apart(tmp_path):
    from safetensors.torch import load_file

    src = tmp_path / "tied"
    src.mkdir()
    w = torch.arange(6.0).reshape(2, 3)
    torch.save({"embed.weight": w, "lm_head.weight": w, "view": w[0]}, src / "pytorch_model.bin")
    convert_weights(src, tmp_path / "o")
    back = load_file(str(tmp_path / "o" / "model.safetensors"))
    assert torch.equal(back["embed.weight"], w) and torch.equal(back["lm_head.weight"], w)
    assert torch.equal(back["view"], w[0])


def test_hyena_tiny_converts_without_pickle_left(hyena_dir):
    names = sorted(p.name for p in hyena_dir.iterdir())
    assert "model.safetensors" in names and "modeling_hyena.py" in names and "pytorch_model.bin" not in names
    enc = HFEncoder(HFConfig(model=str(hyena_dir), trust_remote_code=True))
    # the same on every machine: anticapt 1.0's checkpoint, converted deterministically
    assert enc.dim == 128 and enc.spec()["weights_sha256"] == HYENA_WEIGHTS_SHA256
