import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="hf-home-"))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray per test session: 2 CPUs, no dashboard, small object store."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20,
             log_to_driver=False, _temp_dir=tempfile.mkdtemp(prefix="ray-"))
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def hyena_dir(request, tmp_path_factory) -> Path:
    """HyenaDNA-tiny converted to safetensors (see tests/hyena.py); fails, never skips, when
    the anticapt wheel cannot be fetched."""
    from hyena import FetchError, hyena_tiny

    try:
        return hyena_tiny(Path(request.config.cache.mkdir("anticapt-wheel")), tmp_path_factory.mktemp("hyena"))
    except FetchError as e:
        pytest.fail(str(e), pytrace=False)


def write_fasta(path: Path, records, width: int = 60) -> Path:
    with open(path, "w") as f:
        for header, seq in records:
            f.write(f">{header}\n")
            for i in range(0, len(seq), width):
                f.write(seq[i : i + width] + "\n")
    return path


@pytest.fixture(scope="session")
def serve_port(ray_session):
    """Serve's HTTP proxy on 127.0.0.1 at a free port (one per session)."""
    import socket

    from ray import serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 30})
    yield port
    serve.shutdown()


class Sentinel:
    """Unpickling this creates ``path``: proof that a loader ran pickle on attacker bytes."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def malicious_pickle(target: Path, sentinel: Path) -> Path:
    import pickle

    target.write_bytes(pickle.dumps(Sentinel(sentinel)))
    return target
