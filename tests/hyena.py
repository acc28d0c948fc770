"""HyenaDNA-tiny, the one real pretrained DNA model obtainable from a package registry.

``anticapt`` 1.0 (PyPI, GPL-3.0; the model code is the LongSafari HyenaDNA port, BSD-3) ships
``anticapt/models/dataset1/finetuned_hyenadna/``: HyenaDNA-tiny (2 layers, d_model 128, 1 kb
context, one token per base, causal), fine-tuned on aptamers, as a ``pytorch_model.bin``
pickle. GPL: it is never vendored; the wheel is fetched at test time with
``pip download --no-deps`` (cached under pytest's cache dir), checked against its sha256,
the model folder is unzipped and converted with ``genoray.encoders.weights.convert_weights``.
``GENORAY_ANTICAPT_WHEEL=/path/to/anticapt-1.0-py3-none-any.whl`` uses a local copy instead.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

WHEEL = "anticapt-1.0-py3-none-any.whl"
WHEEL_SHA256 = "55c934b43b1e14bcbcc623c072386decb446ca319220d43907136f5147476404"
MODEL_PREFIX = "anticapt/models/dataset1/finetuned_hyenadna/"


class FetchError(RuntimeError):
    pass


def fetch_wheel(cache: Path) -> Path:
    """The anticapt 1.0 wheel: ``$GENORAY_ANTICAPT_WHEEL``, the cache, or ``pip download``."""
    local = os.environ.get("GENORAY_ANTICAPT_WHEEL")
    wheel = Path(local) if local else cache / WHEEL
    if not wheel.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "anticapt==1.0", "-d", str(cache)]
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0 or not wheel.is_file():
            raise FetchError(
                f"could not download the anticapt 1.0 wheel (HyenaDNA-tiny test model) from the package "
                f"registry: `{' '.join(cmd)}` exited {proc.returncode}: {proc.stderr.strip()[-800:]} -- "
                f"these tests need the registry, or GENORAY_ANTICAPT_WHEEL=/path/to/{WHEEL}")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise FetchError(f"{wheel}: sha256 {digest} != {WHEEL_SHA256} (not the anticapt 1.0 wheel)")
    return wheel


def hyena_tiny(cache: Path, work: Path) -> Path:
    """Unzip HyenaDNA-tiny from the wheel into ``work/src`` and convert it into ``work/model``."""
    from genoray.encoders.weights import convert_weights

    wheel = fetch_wheel(cache)
    src = work / "src"
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name.startswith(MODEL_PREFIX) and not name.endswith("/"):
                target = src / name[len(MODEL_PREFIX):]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(z.read(name))
    convert_weights(src, work / "model")
    return work / "model"
