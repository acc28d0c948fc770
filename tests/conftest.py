import os
import shutil
import tempfile
from pathlib import Path

import pytest

from genoray.serving.haproxy import shared_private_dir

# A fresh, empty temp dir for the whole session, so leftovers of earlier runs (a Ray temp dir,
# caches) cannot hide a missing set-up step: a fresh machine has none of them. Subprocesses
# (multi-node Ray clusters) inherit it through TMPDIR. ``ray.cluster_utils.Cluster`` writes its
# address file into the *default* Ray temp dir ($TMPDIR/ray) even when given ``temp_dir``, and
# fails where no Ray ever ran, so that directory is created here too.
SESSION_TMP = tempfile.mkdtemp(prefix="gr-")
os.environ["TMPDIR"] = SESSION_TMP
tempfile.tempdir = None  # tempfile caches the old TMPDIR
os.makedirs(os.path.join(SESSION_TMP, "ray"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="hf-home-"))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["GENORAY_CACHE"] = os.path.join(SESSION_TMP, "genoray-cache")  # node-local records, not ~/.cache
# The moto server's dummy credentials, set before any Ray starts: genoray never forwards
# credentials to Ray workers (genoray.infra.fs.forwarded_env), so each worker reads them from its
# node's own chain, here the environment the raylet inherited (tests/s3.py sets the endpoint).
os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")

# HAProxy's per-node run dirs (Ray names them by node id) go to the shared /tmp/gr-hap-<uid> from
# any process whose TMPDIR is too long for HAProxy's sockets (genoray.serving.haproxy): a session
# under a long TMPDIR, or a service a test starts with TMPDIR in its tmp_path. A test that kills
# such a service, or starts Ray in-process, leaves its dir there: pytest_unconfigure removes the
# ones made since this line (and the dir, if it is new); nothing else of this user should be
# starting HAProxy on this host meanwhile.
HAP_DIR = shared_private_dir()
HAP_BEFORE = set(os.listdir(HAP_DIR)) if HAP_DIR.is_dir() else None

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FIXTURE_DATA = Path(__file__).resolve().parent / "data"


def data_file(name: str) -> Path:
    """A real dataset by name: the full file from ``../shared/data`` when present, else the small
    seeded sample shipped in ``tests/data`` (see its README), so no test skips on a fresh clone."""
    full = SHARED_DATA / f"{name}.parquet"
    return full if full.is_file() else FIXTURE_DATA / f"{name}.sample.parquet"


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray per test session: 2 CPUs, no dashboard, small object store."""
    import shutil

    import ray

    from genoray.infra.runtime import ray_temp_dir

    temp = ray_temp_dir(prefix="ray-")  # under TMPDIR unless that is too long for Ray's sockets
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20,
             log_to_driver=False, _temp_dir=temp)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="session")
def hyena_dir(request, tmp_path_factory) -> Path:
    """HyenaDNA-tiny converted to safetensors (see tests/hyena.py); fails, never skips, when
    the anticapt wheel cannot be fetched. The wheel is cached under the repo's .pytest_cache
    (not under the per-session TMPDIR), also when the cache plugin is off."""
    from hyena import FetchError, hyena_tiny

    cache = getattr(request.config, "cache", None)
    wheels = (Path(cache.mkdir("anticapt-wheel")) if cache is not None
              else Path(request.config.rootpath) / ".pytest_cache" / "d" / "anticapt-wheel")
    try:
        return hyena_tiny(wheels, tmp_path_factory.mktemp("hyena"))
    except FetchError as e:
        pytest.fail(str(e), pytrace=False)


def pytest_unconfigure(config):
    """Remove the session temp dir (Ray's session files, pytest's tmp_path trees) and the HAProxy
    run dirs this session left in the shared one."""
    import shutil

    shutil.rmtree(SESSION_TMP, ignore_errors=True)
    if HAP_DIR.is_dir():
        for name in set(os.listdir(HAP_DIR)) - (HAP_BEFORE or set()):
            shutil.rmtree(HAP_DIR / name, ignore_errors=True)
        if HAP_BEFORE is None and not os.listdir(HAP_DIR):
            HAP_DIR.rmdir()


def write_fasta(path: Path, records, width: int = 60) -> Path:
    """Write ``(header, sequence)`` records as FASTA wrapped at ``width``."""
    with open(path, "w") as f:
        for header, seq in records:
            f.write(f">{header}\n")
            for i in range(0, len(seq), width):
                f.write(seq[i : i + width] + "\n")
    return path


def toy_records(n: int = 200, seed: int = 0, prefix: str = "s", flip_train: bool = False) -> list[tuple[str, str]]:
    """The shared toy data: ``n`` labeled 60-bp records, ``gc`` ones drawn from a GC-rich and
    ``at`` ones from an AT-rich alphabet (so a k-mer model separates them), every 5th in the
    ``test`` split; ``flip_train`` swaps the training labels (a bad batch)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    recs = []
    for i in range(n):
        label = "gc" if i % 2 else "at"
        alphabet = list("GGCCAT") if label == "gc" else list("AATTGC")
        split = "test" if i % 5 == 0 else "train"
        if flip_train and split == "train":
            label = "at" if label == "gc" else "gc"
        recs.append((f"{prefix}{i} label={label} split={split}", "".join(rng.choice(alphabet, size=60))))
    return recs


def toy_fasta(path: Path, n: int = 200, seed: int = 0, prefix: str = "s", flip_train: bool = False,
              extra: tuple[tuple[str, str], ...] = ()) -> Path:
    """:func:`toy_records` (plus ``extra`` records) written to ``path``."""
    return write_fasta(path, toy_records(n, seed, prefix, flip_train) + list(extra))


@pytest.fixture
def labeled_fasta(tmp_path):
    """120 toy records and one with an invalid character (``bad``)."""
    return toy_fasta(tmp_path / "toy.fa", n=120, extra=(("bad label=gc split=train", "ACGTXXXX"),))


@pytest.fixture(scope="session")
def serve_port(ray_session):
    """Serve's HTTP proxy on 127.0.0.1 at a free port (one per session)."""
    from ray import serve

    from genoray.infra.ports import free_port

    port = free_port()
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


@pytest.fixture
def short_tmp():
    """A fresh TMPDIR under /tmp short enough for Ray's socket paths (the job's Ray temp dir goes there)."""
    tmp = Path(tempfile.mkdtemp(prefix="gs", dir="/tmp"))
    yield tmp
    shutil.rmtree(tmp, ignore_errors=True)
