#!/usr/bin/env bash
# GPU check for genoray, for a machine with an NVIDIA GPU (not run on the 2-core CPU dev box).
#   bash bench/gpu_check.sh    # WORK=DIR keeps the venv and outputs (default: a new temp dir)
# Environment: PYTHON (default python3.11), TORCH_VERSION (default 2.13.0, the pin), SKIP_INSTALL=1
# (use the active environment as it is: no venv, no pip), GENORAY_ANTICAPT_WHEEL=/path/to/the wheel
# (an offline box; else pip downloads it).
# 1. fresh venv: the pinned torch (the PyPI Linux x86_64 wheel is a CUDA build) and genoray[gpu,test]
#    (faiss-gpu, never faiss-cpu beside it: checked); torch must see CUDA and FAISS a GPU
# 2. HyenaDNA-tiny from the anticapt 1.0 wheel (GPL: fetched, never vendored), sha256-checked,
#    converted by `genoray convert-weights`
# 3. bench/bench_hf_embed.py on the GPU: 20k sequences of 50-2,000 bp, the per-actor loop vs
#    token-budget batches vs the overlapped pipeline, 3 interleaved repeats (seq/s, tokens/s,
#    ratios, padding waste)
# 4. bench/gpu_check_faiss.py: faiss.get_num_gpus() > 0, an index_cpu_to_gpu round trip (copy and
#    search timed against the CPU, neighbours compared), genoray's IVF build trained on the GPU
#    (IndexReport.gpu_used and the manifest's gpu_trained)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
die() { echo "gpu_check.sh: $*" >&2; exit 2; }

command -v nvidia-smi >/dev/null 2>&1 \
    || die "no NVIDIA GPU on this machine (nvidia-smi not found); run this on a GPU machine. Nothing was installed or run."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
    || die "nvidia-smi found no usable GPU (driver not loaded?). Nothing was installed or run."
WORK=${WORK:-$(mktemp -d -t genoray-gpu-XXXX)}
mkdir -p "$WORK"
echo "work dir: $WORK"

if [[ "${SKIP_INSTALL:-0}" != 1 ]]; then
    PY=${PYTHON:-python3.11}
    command -v "$PY" >/dev/null 2>&1 || die "$PY not found (set PYTHON to a Python >= 3.11)"
    "$PY" -m venv "$WORK/venv"
    # shellcheck disable=SC1091
    . "$WORK/venv/bin/activate"
    pip install -q --upgrade pip
    pip install -q "torch==${TORCH_VERSION:-2.13.0}" -e "$REPO[gpu,test]"
fi
if pip show faiss-cpu >/dev/null 2>&1; then
    die "faiss-cpu is installed: genoray[gpu] needs faiss-gpu alone (both ship the module faiss and one shadows the other); uninstall faiss-cpu"
fi
python - <<'PY'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} sees no CUDA device (a CPU-only wheel? torch.version.cuda={torch.version.cuda})")
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))
PY

export HF_HOME="$WORK/hf-home" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
rm -rf "$WORK/hyena" && mkdir -p "$WORK/hyena"
python - "$WORK/hyena" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, "tests")
from hyena import hyena_tiny  # pip download (or $GENORAY_ANTICAPT_WHEEL), sha256 check, convert-weights
work = Path(sys.argv[1])
print("HyenaDNA-tiny converted:", hyena_tiny(work / "cache", work))
PY

echo "== HF embed benchmark (GPU) =="
PYTHONPATH="$REPO/bench" python "$REPO/bench/bench_hf_embed.py" --model "$WORK/hyena/model" --n 20000 \
    --batch-size 256 --tokens-per-batch 262144 --threads 4 --repeats 3 --variants loop,budget,overlapped

echo "== FAISS on the GPU =="
rm -rf "$WORK/faiss" && mkdir -p "$WORK/faiss"
python "$REPO/bench/gpu_check_faiss.py" --work "$WORK/faiss"
echo "GPU check passed; outputs in $WORK"
