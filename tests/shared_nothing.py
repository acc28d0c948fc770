"""A Ray cluster on one machine whose nodes share nothing but object storage (the harness of
tests/test_cluster_s3.py; the same set-up as ``../shared/tools/cluster_s3.sh``).

* a moto S3 server on 127.0.0.1 (its own process);
* a Ray head with 0 CPUs: the driver's node, where the CLI commands of a test run;
* worker nodes started with ``ray start --address`` inside their own mount namespace
  (``unshare --mount --propagation private``) with a private tmpfs over ``/tmp`` and
  ``~/.cache``: a path one node writes there is invisible to the others and to the driver, as
  on a cluster without a shared file system. The interpreter and the code (when they live under
  ``/tmp`` or ``~/.cache``, as in a CI checkout there) are bind-mounted back into the namespace,
  read-only, so only scratch and cache space is private.

Every node gets the object-store settings from its own environment at ``ray start`` (its own
credential chain), as a pod or VM role would provide them.

:func:`why_not` says why the harness cannot run here (not root, no ``unshare``, no moto);
tests skip with that reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from genoray.infra.ports import free_port

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
HIDDEN = (Path("/tmp"), Path.home() / ".cache")  # what each worker node gets a private tmpfs over



def why_not() -> str | None:
    """Why a shared-nothing cluster cannot be started here, or None."""
    if os.geteuid() != 0:
        return "needs root for unshare --mount (private /tmp per node)"
    if not shutil.which("unshare") or not shutil.which("mount"):
        return "needs util-linux unshare and mount"
    if not (BIN / "moto_server").exists() or not (BIN / "ray").exists():
        return f"needs moto_server and ray in {BIN} (the test extra)"
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True)
    if r.returncode != 0:
        return f"unshare --mount fails here: {r.stderr.decode().strip()[:200]}"
    return None


def _under_hidden(p: Path) -> bool:
    return any(p == h or h in p.parents for h in HIDDEN)


class SharedNothingCluster:
    """Start with :meth:`start`, stop with :meth:`stop` (kills every process it started)."""

    def __init__(self, workers: int = 2, worker_cpus: float = 1, object_store_mb: int = 150):
        self.workers, self.worker_cpus, self.object_store_mb = workers, worker_cpus, object_store_mb
        self.root = Path(tempfile.mkdtemp(prefix="grc-", dir="/tmp"))  # short: Ray's socket paths
        self.keep = Path(tempfile.mkdtemp(prefix="grk-", dir="/run" if os.access("/run", os.W_OK) else "/var/tmp"))
        self.procs: dict[str, subprocess.Popen] = {}
        self.s3_port, self.ray_port = free_port(), free_port()
        self.env = {**os.environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.s3_port}", "AWS_ACCESS_KEY_ID": "testing",
                    "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "RAY_AUTH_MODE": "disabled",
                    "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
        self.env.pop("RAY_ADDRESS", None)
        self.address = f"127.0.0.1:{self.ray_port}"

    # ------------------------------------------------------------------ processes

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "ab")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=env or self.env, start_new_session=True)
        log.close()
        self.procs[name] = p
        return p

    def _worker_script(self, i: int) -> str:
        """The shell run inside worker ``i``'s mount namespace: private tmpfs over /tmp and
        ~/.cache, with the interpreter and the code bound back (read-only) when they are under them."""
        keep = sorted({p for p in (Path(sys.prefix).resolve(), REPO, Path(sys.base_prefix).resolve())
                       if _under_hidden(p)})
        lines = ["set -e"]
        for n, p in enumerate(keep):
            lines += [f"mkdir -p {self.keep}/{i}-{n}", f"mount --bind {shlex.quote(str(p))} {self.keep}/{i}-{n}"]
        for h in HIDDEN:
            lines += [f"mkdir -p {shlex.quote(str(h))}", f"mount -t tmpfs -o size=2g tmpfs {shlex.quote(str(h))}"]
        for n, p in enumerate(keep):
            lines += [f"mkdir -p {shlex.quote(str(p))}",
                      f"mount --bind -o ro {self.keep}/{i}-{n} {shlex.quote(str(p))}"]
        res = json.dumps({f"node{i}": 1})
        lines += ["export TMPDIR=/tmp", f"exec {shlex.quote(str(BIN / 'ray'))} start --block --address={self.address} "
                  f"--node-ip-address=127.0.0.1 --num-cpus={self.worker_cpus} "
                  f"--object-store-memory={self.object_store_mb * 2**20} --resources={shlex.quote(res)}"]
        return "\n".join(lines)

    def start_worker(self, i: int) -> None:
        """Start (or restart) worker node ``i`` in its own mount namespace."""
        self._spawn(f"worker{i}", ["unshare", "--mount", "--propagation", "private", "bash", "-c", self._worker_script(i)])

    def kill_worker(self, i: int) -> None:
        """SIGKILL worker node ``i`` (raylet, its workers and object store): a lost node."""
        p = self.procs.pop(f"worker{i}")
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(timeout=30)

    def start(self, timeout: float = 120) -> SharedNothingCluster:
        """Start S3, the head and the workers; wait until every node is alive."""
        self._spawn("moto", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.s3_port)])
        self._wait(lambda: urllib.request.urlopen(self.env["AWS_ENDPOINT_URL"], timeout=2), 30, "moto S3")
        self._spawn("head", [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
                             f"--port={self.ray_port}", "--num-cpus=0", "--include-dashboard=false",
                             f"--object-store-memory={100 * 2**20}", f"--temp-dir={self.root}/ray"])
        for i in range(1, self.workers + 1):
            self.start_worker(i)
        self.wait_nodes(self.workers + 1, timeout)
        return self

    def alive_nodes(self) -> int:
        """Alive nodes of the cluster, asked by a short-lived driver."""
        r = self.python("import ray; ray.init(logging_level='ERROR', log_to_driver=False); "
                        "print('alive-nodes', sum(1 for n in ray.nodes() if n['Alive']))", timeout=60)
        found = [ln.split()[1] for ln in r.stdout.splitlines() if ln.startswith("alive-nodes ")]
        return int(found[-1]) if r.returncode == 0 and found else 0  # Ray may print warnings around it

    def wait_nodes(self, n: int, timeout: float = 120) -> None:
        """Wait until ``n`` nodes are alive (else raise with the logs' tails)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.alive_nodes() == n:
                return
            time.sleep(1)
        raise RuntimeError(f"{n} nodes not alive after {timeout} s; logs: {self.tails()}")

    def _wait(self, probe, timeout: float, what: str) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            try:
                probe()
                return
            except Exception:
                time.sleep(1)
        raise RuntimeError(f"{what} not up after {timeout} s; logs: {self.tails()}")

    def tails(self, n: int = 5) -> str:
        """The last lines of every process log (for failure messages)."""
        out = []
        for f in sorted(self.root.glob("*.log")):
            out.append(f"--- {f.name}\n" + "\n".join(f.read_text(errors="replace").splitlines()[-n:]))
        return "\n".join(out)

    def stop(self) -> None:
        """Kill every process started (process groups), remove the temp dirs."""
        for p in self.procs.values():
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        for p in self.procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.procs.clear()
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.keep, ignore_errors=True)

    # ------------------------------------------------------------------ running things on it

    def driver_env(self, **extra: str) -> dict[str, str]:
        """The environment of a driver on the head node: ``RAY_ADDRESS`` and the S3 settings."""
        return {**self.env, "RAY_ADDRESS": self.address, **extra}

    def python(self, code: str, timeout: float = 300, **extra: str) -> subprocess.CompletedProcess:
        """Run ``python -c code`` as a driver on the head node."""
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                              env=self.driver_env(**extra), stdin=subprocess.DEVNULL)

    def genoray(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``genoray ARGS`` as a driver on the head node; with ``check``, fail with its stderr."""
        r = subprocess.run([str(BIN / "genoray"), *args], capture_output=True, text=True, timeout=timeout,
                           env=self.driver_env(), stdin=subprocess.DEVNULL)
        if check and r.returncode != 0:
            raise AssertionError(f"genoray {' '.join(args)}: rc {r.returncode}\n{r.stderr[-3000:]}\n{self.tails()}")
        return r

    def popen(self, *args: str) -> subprocess.Popen:
        """Start ``genoray ARGS`` in the background (its own process group)."""
        return subprocess.Popen([str(BIN / "genoray"), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=self.driver_env(), stdin=subprocess.DEVNULL, start_new_session=True)

    def s3(self):
        """A boto3 S3 client of the cluster's object store."""
        import boto3

        return boto3.client("s3", endpoint_url=self.env["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                            aws_secret_access_key="testing", region_name="us-east-1")

    def keys(self, bucket: str, prefix: str = "") -> dict[str, str]:
        """key -> sha256 of every object under ``prefix``."""
        s3, out = self.s3(), {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for o in page.get("Contents", []):
                body = s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
                out[o["Key"]] = hashlib.sha256(body).hexdigest()
        return out
