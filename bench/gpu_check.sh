#!/usr/bin/env bash
# GPU check for genoray, for a machine with an NVIDIA GPU (not run on the 2-core CPU dev box).
#   bash bench/gpu_check.sh            # WORK=/path to keep the venv and outputs (default: a new temp dir)
# 1. fresh venv with the gpu extra (faiss-gpu) and the pinned torch
# 2. HyenaDNA-tiny from the anticapt 1.0 wheel (GPL: fetched, never vendored), converted by convert-weights
# 3. bench/bench_hf_embed.py on the GPU: 20k sequences of 50-2,000 bp, overlapped pipeline vs per-actor
#    loop (seq/s, bases/s, ratio, padding waste)
# 4. an IVF index build on the GPU from a synthetic store, and a check that FAISS really trained on it
#    (IndexReport.gpu_used / manifest gpu_trained, faiss.get_num_gpus() > 0)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
WORK=${WORK:-$(mktemp -d -t genoray-gpu-XXXX)}
echo "work dir: $WORK"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv

python3.11 -m venv "$WORK/venv"
. "$WORK/venv/bin/activate"
pip install -q --upgrade pip
# torch from PyPI is the CUDA build on Linux x86_64; the gpu extra brings faiss-gpu
pip install -q "torch==2.13.0" -e "$REPO[gpu,test]"
python - <<'PY'
import torch, faiss
assert torch.cuda.is_available(), "torch sees no CUDA device"
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))
n = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
assert n > 0, "FAISS sees no GPU (is faiss-gpu installed, not faiss-cpu?)"
print("faiss", faiss.__version__, "GPUs:", n)
PY

export HF_HOME="$WORK/hf-home" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
pip download -q --no-deps anticapt==1.0 -d "$WORK/wheel"
python -m zipfile -e "$WORK"/wheel/anticapt-1.0-py3-none-any.whl "$WORK/anticapt"
rm -rf "$WORK/hyenadna-tiny"
genoray convert-weights "$WORK/anticapt/anticapt/models/dataset1/finetuned_hyenadna" "$WORK/hyenadna-tiny"

echo "== HF embed benchmark (GPU) =="
PYTHONPATH="$REPO/bench" python "$REPO/bench/bench_hf_embed.py" --model "$WORK/hyenadna-tiny" --n 20000 \
    --tokens-per-batch 262144 --batch-size 256 --repeats 3

echo "== GPU index build =="
python - "$WORK" <<'PY'
import sys, time
from pathlib import Path
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
from genoray.config import EmbedConfig, IndexConfig, KmerConfig
from genoray.embed import embed_sequences
from genoray.encoders.kmer import KmerEncoder
from genoray.index import build_index, gpu_count
from genoray.artifacts import read_json

work = Path(sys.argv[1])
rng = np.random.default_rng(0)
n = 300_000
seqs = ["".join(rng.choice(list("ACGT"), 120)) for _ in range(n)]
pq.write_table(pa.table({"id": [f"s{i}" for i in range(n)], "sequence": seqs,
                         "split": ["train"] * n}), work / "synthetic.parquet", row_group_size=50_000)
embed_sequences(work / "synthetic.parquet", work / "store", KmerEncoder(KmerConfig()), use_ray=False)
t0 = time.perf_counter()
rep = build_index(work / "store", work / "index", IndexConfig(index_type="IVF1024,Flat", target_recall=0.95))
seconds = time.perf_counter() - t0
manifest = read_json(work / "index" / "manifest.json")
print(f"index {rep.factory}: {rep.ntotal} vectors, recall@10 {rep.recall_at_10:.3f}, {seconds:.1f} s, "
      f"{rep.ntotal / seconds:.0f} vectors/s, gpu_used={rep.gpu_used}, manifest gpu_trained={manifest.get('gpu_trained')}")
assert gpu_count() > 0 and rep.gpu_used and manifest.get("gpu_trained"), "FAISS did not train on the GPU"
print("OK: FAISS trained the IVF quantizer on the GPU")
PY
echo "GPU check passed; outputs in $WORK"
