"""jobs/kuberay: the KubeRay manifests, checked offline.

Every ray.io document validates against the openAPIV3Schema of KubeRay's CRD (v1, KubeRay 1.7.0,
vendored in tests/data/kuberay), made strict about unknown fields as ``kubectl apply`` is (field
validation Strict, the default since Kubernetes 1.27; ``kubeconform -strict``). Mutated copies
must fail it. Then what the schema cannot see: the genoray commands in the manifests parse with
genoray's own parser, the probes answer without an API key, the grace period covers the drain,
the ray version equals the pin, and no object-storage credential is ever an environment variable.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from genoray.cli.args import REINDEX, SERVE
from genoray.cli.commands import build_parser
from genoray.cli.flags import build

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "jobs" / "kuberay"
DATA = ROOT / "tests" / "data" / "kuberay"
SCHEMAS = {"RayCluster": "ray.io_rayclusters.v1.schema.json.gz", "RayJob": "ray.io_rayjobs.v1.schema.json.gz",
           "RayCronJob": "ray.io_raycronjobs.v1.schema.json.gz"}
CREDENTIAL_VARS = {"AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN", "GOOGLE_APPLICATION_CREDENTIALS"}
OVERWRITE = "ray.io/overwrite-container-cmd"


def documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((MANIFESTS / name).read_text()) if d is not None]


def all_documents() -> list[tuple[str, dict[str, Any]]]:
    return [(p.name, d) for p in sorted(MANIFESTS.glob("*.yaml")) for d in documents(p.name)]


def ray_documents() -> list[tuple[str, dict[str, Any]]]:
    return [(f, d) for f, d in all_documents() if d["apiVersion"] == "ray.io/v1"]


def the(name: str, kind: str) -> dict[str, Any]:
    (doc,) = [d for d in documents(name) if d["kind"] == kind]
    return doc


def strict(schema: Any) -> Any:
    """A copy of a structural schema where an object with ``properties`` and neither
    ``additionalProperties`` nor ``x-kubernetes-preserve-unknown-fields`` refuses other fields
    (the API server would drop them, or refuse them under Strict field validation)."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


_validators: dict[str, jsonschema.Draft4Validator] = {}


def validator(kind: str) -> jsonschema.Draft4Validator:
    """Draft 4 is the JSON Schema dialect of OpenAPI 3.0 schemas (boolean exclusiveMinimum, ...);
    ``x-kubernetes-*`` keywords are unknown to it and ignored: ``x-kubernetes-int-or-string``
    fields come with ``anyOf: [integer, string]``, which is what is checked."""
    if kind not in _validators:
        with gzip.open(DATA / SCHEMAS[kind], "rt") as f:
            schema = json.load(f)
        jsonschema.Draft4Validator.check_schema(schema)
        _validators[kind] = jsonschema.Draft4Validator(strict(schema))
    return _validators[kind]


def errors(doc: dict[str, Any]) -> list[jsonschema.ValidationError]:
    return sorted(validator(doc["kind"]).iter_errors(doc), key=lambda e: list(e.absolute_path))


def cluster_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    """(file, RayClusterSpec) of every manifest: a RayCluster's spec, a RayJob's cluster."""
    for f, d in ray_documents():
        spec = d["spec"]
        if d["kind"] == "RayJob":
            spec = spec["rayClusterSpec"]
        elif d["kind"] == "RayCronJob":
            spec = spec["jobTemplate"]["rayClusterSpec"]
        yield f, spec


def pod_templates() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for f, spec in cluster_specs():
        yield f, "head", spec["headGroupSpec"]["template"]
        for g in spec.get("workerGroupSpecs", []):
            yield f, g["groupName"], g["template"]


def walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)


def ray_pin() -> str:
    (pin,) = re.findall(r"^ray==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M)
    return pin


def genoray_argv(text: str) -> list[str]:
    """The argv of the ``genoray ...`` command inside a shell string (after ``exec``, if any)."""
    words = shlex.split(text.replace("\n", " "))
    start = words.index("genoray")
    end = next((i for i in range(start, len(words)) if words[i] in ("&&", ";", "||")), len(words))
    return words[start + 1:end]


def parse(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


# ---- the schema --------------------------------------------------------------------------------

def test_vendored_schemas_are_the_v1_schemas_of_their_kinds():
    for kind in SCHEMAS:
        schema = validator(kind).schema
        props = schema["properties"]
        assert {"apiVersion", "kind", "metadata", "spec"} <= set(props), kind
    assert sum((DATA / f).stat().st_size for f in SCHEMAS.values()) < 1_000_000


def test_manifests_hold_every_kind_of_the_deployment():
    kinds = {(f, d["kind"]) for f, d in all_documents()}
    assert {("raycluster-serve.yaml", "RayCluster"), ("rayjob-reindex.yaml", "RayJob"),
            ("raycronjob-reindex.yaml", "RayCronJob")} <= kinds
    assert all(d["apiVersion"] in ("v1", "ray.io/v1") for _, d in all_documents())


@pytest.mark.parametrize("name,doc", ray_documents(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_manifest_validates_against_the_kuberay_crd_schema(name, doc):
    problems = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors(doc)]
    assert not problems, f"{name}:\n" + "\n".join(problems)


def _set(path: list[Any], value: Any):
    def mutate(doc):
        node = doc
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
    return mutate


def _drop(path: list[Any]):
    def mutate(doc):
        node = doc
        for k in path[:-1]:
            node = node[k]
        del node[path[-1]]
    return mutate


HEAD = ["spec", "headGroupSpec"]
WORKER0 = ["spec", "workerGroupSpecs", 0]
JOB_HEAD = ["spec", "rayClusterSpec", "headGroupSpec"]
CASES = [
    # (manifest, kind, mutation, the path the error must be reported at)
    ("raycluster-serve.yaml", "RayCluster", _set(HEAD + ["rayStartParams", "num-cpus"], 0),
     HEAD + ["rayStartParams", "num-cpus"]),                                         # wrong type
    ("raycluster-serve.yaml", "RayCluster", _drop(WORKER0 + ["groupName"]), WORKER0),    # missing required
    ("raycluster-serve.yaml", "RayCluster", _set(WORKER0 + ["replicas"], "two"), WORKER0 + ["replicas"]),
    ("raycluster-serve.yaml", "RayCluster", _set(["spec", "authOptions", "mode"], "password"),
     ["spec", "authOptions", "mode"]),                                               # unknown enum value
    ("raycluster-serve.yaml", "RayCluster", _set(["spec", "enableInTreeAutoscaling"], "yes"),
     ["spec", "enableInTreeAutoscaling"]),
    ("raycluster-serve.yaml", "RayCluster", _drop(HEAD + ["template", "spec", "containers", 0, "name"]),
     HEAD + ["template", "spec", "containers", 0]),
    ("raycluster-serve.yaml", "RayCluster",
     _set(HEAD + ["template", "spec", "containers", 0, "resources", "limits", "memory"], "8 GiB"),
     HEAD + ["template", "spec", "containers", 0, "resources", "limits", "memory"]),  # not a quantity
    ("raycluster-serve.yaml", "RayCluster", _set(HEAD + ["template", "spec", "terminationGracePeriod"], 50),
     HEAD + ["template", "spec"]),                                                   # misspelt field
    ("rayjob-reindex.yaml", "RayJob", _set(["spec", "rayClusterSpec", "authOptions", "mode"], "off"),
     ["spec", "rayClusterSpec", "authOptions", "mode"]),
    ("rayjob-reindex.yaml", "RayJob", _set(["spec", "shutdownAfterJobFinish"], True), ["spec"]),
    ("rayjob-reindex.yaml", "RayJob", _set(["spec", "shutdownAfterJobFinishes"], "true"),
     ["spec", "shutdownAfterJobFinishes"]),
    ("rayjob-reindex.yaml", "RayJob", _drop(JOB_HEAD + ["template"]), JOB_HEAD),
    ("raycronjob-reindex.yaml", "RayCronJob", _drop(["spec", "schedule"]), ["spec"]),
    ("raycronjob-reindex.yaml", "RayCronJob", _set(["spec", "timeZone"], ""), ["spec", "timeZone"]),
]


@pytest.mark.parametrize("name,kind,mutate,where", CASES, ids=[f"{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_a_broken_copy_fails_validation_at_the_broken_field(name, kind, mutate, where):
    doc = copy.deepcopy(the(name, kind))
    assert not errors(doc)
    mutate(doc)
    found = [list(e.absolute_path) for e in errors(doc)]
    assert found, "the mutated manifest still validates"
    assert where in found, found


# ---- what the schema does not check ------------------------------------------------------------

def test_containers_have_an_image_and_a_command():
    """Ray containers get KubeRay's ``ray start`` as their command; one whose pod overwrites it
    (the serve head) must start Ray itself, without --block, and then run its command."""
    seen = 0
    for f, group, template in pod_templates():
        overwrite = template.get("metadata", {}).get("annotations", {}).get(OVERWRITE) == "true"
        for c in template["spec"]["containers"]:
            seen += 1
            assert c.get("image") and not c["image"].endswith(":latest"), (f, group)
            if overwrite:
                script = " ".join(c["command"] + c["args"])
                assert "${KUBERAY_GEN_RAY_START_CMD/--block/}" in script, (f, group)
                assert script.index("KUBERAY_GEN_RAY_START_CMD") < script.index("exec genoray "), (f, group)
            else:
                assert "command" not in c and "args" not in c, f"{f} {group}: KubeRay would prepend it to ray start"
    assert seen >= 6
    for f, d in ray_documents():
        if d["kind"] == "RayJob":
            assert d["spec"]["entrypoint"].startswith("genoray "), f


def test_serve_command_parses_and_fits_the_pod():
    rc = the("raycluster-serve.yaml", "RayCluster")
    pod = rc["spec"]["headGroupSpec"]["template"]
    (head,) = pod["spec"]["containers"]
    args = parse(genoray_argv(head["args"][0]))
    assert args.command == "serve"
    cfg = build(args, SERVE, root=args.root)        # genoray's own validation of the settings
    assert cfg.root.startswith("s3://")             # no local path: pods share only object storage
    assert cfg.host == "0.0.0.0"
    assert cfg.require_key                          # keys come from the Secret, never switched off
    assert cfg.min_replicas >= 2
    ports = {p["containerPort"] for p in head["ports"]}
    assert cfg.port in ports
    svc = the("raycluster-serve.yaml", "Service")
    assert svc["spec"]["selector"] == {"ray.io/cluster": rc["metadata"]["name"]}
    assert {p["targetPort"] for p in svc["spec"]["ports"]} == {cfg.port}
    # docs/operations.md: the grace period covers the preStop, the drain and 25 s for the stop
    pre_stop = head["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["spec"]["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + cfg.graceful_shutdown_timeout_s + 25
    env = {e["name"]: e for e in head["env"]}
    assert env["GENORAY_API_KEYS"]["valueFrom"]["secretKeyRef"]["key"] == "GENORAY_API_KEYS"
    for group in rc["spec"]["workerGroupSpecs"]:
        template = group["template"]
        (c,) = template["spec"]["containers"]
        assert template["spec"]["terminationGracePeriodSeconds"] >= cfg.graceful_shutdown_timeout_s + 25
        assert "ray drain-node" in " ".join(c["lifecycle"]["preStop"]["exec"]["command"]), group["groupName"]


def test_probes_use_the_unauthenticated_health_and_ready_routes():
    from fastapi.testclient import TestClient

    from genoray.serving.service import create_app

    class Backend:
        def __init__(self, info):
            self._info = info

        async def predict(self, req):
            raise AssertionError("not called")

        async def info(self):
            return self._info

    paths = set()
    for f, group, template in pod_templates():
        if f != "raycluster-serve.yaml":
            continue
        (c,) = template["spec"]["containers"]
        assert c["readinessProbe"]["httpGet"]["path"] == "/v1/ready", group
        if group == "head":  # genoray serve runs here, and Serve always keeps a proxy on the head
            assert c["startupProbe"]["httpGet"]["path"] == "/v1/ready"
            assert c["livenessProbe"]["httpGet"]["path"] == "/v1/health"
            assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 300
        else:                # a worker without replicas is not ready, but alive: KubeRay's raylet probe
            assert "livenessProbe" not in c and "startupProbe" not in c, group
        paths |= {c[p]["httpGet"]["path"] for p in ("readinessProbe", "livenessProbe", "startupProbe") if p in c}
    keys = ("0" * 64,)
    loading = TestClient(create_app(Backend(None), key_hashes=keys))   # the kubelet sends no API key
    loaded = TestClient(create_app(Backend({"bundle_version": "v1"}), key_hashes=keys))
    assert loading.get("/v1/health").status_code == 200
    assert loading.get("/v1/ready").status_code == 503
    assert loaded.get("/v1/ready").status_code == 200
    assert loaded.get("/v1/info").status_code == 401  # the rest of the API does need a key
    assert paths == {"/v1/health", "/v1/ready"}


def test_reindex_entrypoint_parses_and_uses_object_storage_only():
    job = the("rayjob-reindex.yaml", "RayJob")
    args = parse(genoray_argv(job["spec"]["entrypoint"]))
    assert args.command == "reindex"
    build(args, REINDEX)                            # genoray's own validation of the settings
    assert all(p.startswith("s3://") for p in [*args.inputs, args.work, args.bundles])
    assert not args.no_ray
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["backoffLimit"] == 0
    # a plain string in the CRD schema; the operator refuses other values
    assert spec["submissionMode"] in {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
    assert spec["activeDeadlineSeconds"] < 24 * 3600    # one night ends before the next starts


def test_cronjob_runs_the_same_rayjob():
    job = the("rayjob-reindex.yaml", "RayJob")
    cron = the("raycronjob-reindex.yaml", "RayCronJob")
    assert cron["spec"]["jobTemplate"] == job["spec"]
    assert len(cron["spec"]["schedule"].split()) == 5


def test_node_groups_head_without_cpus_and_gpu_group_with_gpu_limits():
    for f, spec in cluster_specs():
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", f
        groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
        gpu = groups["gpu"]
        assert gpu["replicas"] == gpu["minReplicas"] == 0, f
        (c,) = gpu["template"]["spec"]["containers"]
        assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1, f
        assert "nvidia.com/gpu" not in str(groups["cpu"]), f
        for g in [spec["headGroupSpec"], *groups.values()]:
            for c in g["template"]["spec"]["containers"]:
                assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and c["resources"]["limits"], f
        assert spec["authOptions"]["mode"] == "token", f


def test_temp_files_go_to_a_local_scratch_volume():
    config = {k: v for d in documents("raycluster-serve.yaml") if d["kind"] == "ConfigMap" for k, v in d["data"].items()}
    for f, group, template in pod_templates():
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        for c in template["spec"]["containers"]:
            env = {**{k: v for ref in c.get("envFrom", []) for k, v in config.items() if "configMapRef" in ref},
                   **{e["name"]: e.get("value") for e in c.get("env", [])}}
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            tmp = env.get("TMPDIR")
            assert tmp in mounts and "emptyDir" in volumes[mounts[tmp]], (f, group)
            assert env.get("GENORAY_CACHE", "").startswith(tmp + "/"), (f, group)   # the node's bundle cache


def test_no_object_storage_credential_in_any_environment():
    """Pods get object storage through their ServiceAccount (IRSA / GKE Workload Identity):
    no access key is set in an env var, a ConfigMap loaded as env, or a Secret loaded as env."""
    config_maps = {d["metadata"]["name"]: d.get("data", {}) for _, d in all_documents() if d["kind"] == "ConfigMap"}
    checked = 0
    for f, d in all_documents():
        for node in walk(d):
            for e in node.get("env", []) if isinstance(node.get("env"), list) else []:
                checked += 1
                assert e["name"] not in CREDENTIAL_VARS, (f, e["name"])
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                assert ref is None or e["name"] in ("GENORAY_API_KEYS", "GENORAY_INGRESS_SECRET"), (f, e["name"])
            for ref in node.get("envFrom", []) if isinstance(node.get("envFrom"), list) else []:
                assert "secretRef" not in ref, f
                names = set(config_maps[ref["configMapRef"]["name"]])
                assert not names & CREDENTIAL_VARS, (f, names & CREDENTIAL_VARS)
        if d["kind"] == "ConfigMap":
            assert not set(d["data"]) & CREDENTIAL_VARS, f
        assert d["kind"] != "Secret", f"{f}: secrets are created with kubectl, never kept in the repository"
    assert checked >= 10
    accounts = {d["metadata"]["name"]: d for _, d in all_documents() if d["kind"] == "ServiceAccount"}
    for f, group, template in pod_templates():
        account = accounts[template["spec"]["serviceAccountName"]]
        annotations = account["metadata"]["annotations"]
        assert {"eks.amazonaws.com/role-arn", "iam.gke.io/gcp-service-account"} <= set(annotations), (f, group)


def test_ray_version_is_the_constraints_pin():
    pin = ray_pin()
    for f, spec in cluster_specs():
        assert spec["rayVersion"] == pin, f
    images = {c["image"] for _, _, t in pod_templates() for c in t["spec"]["containers"]}
    for image in images:
        assert re.findall(r"-ray(\d+\.\d+\.\d+)(?:-|$)", image) == [pin], image
    for path in sorted(MANIFESTS.glob("*.yaml")):      # the base image named in the comments too
        for base in re.findall(r"rayproject/ray:(\d+\.\d+\.\d+)", path.read_text()):
            assert base == pin, path.name


def test_haproxy_settings_are_genorays(tmp_path):
    """The serve pods' ConfigMap holds the environment genoray serve gives its own Ray for the
    HAProxy ingress (read by Ray's processes when they start, so it must be in every pod)."""
    from genoray.serving.haproxy import bind_wrapper, haproxy_env, private_dir

    (config,) = [d["data"] for d in documents("raycluster-serve.yaml") if d["kind"] == "ConfigMap"]
    expected = haproxy_env(wrapper=False)
    expected.pop("RAY_SERVE_HAPROXY_NBTHREAD")          # from the CPU count of the host
    expected.pop("GENORAY_INGRESS_SECRET")              # random: from the Secret, in every pod (below)
    # the paths in genoray's 0700 HAProxy directory keep other users of a shared host away from
    # the admin socket; a pod has one user, so the pods keep Ray's defaults (and no such path)
    private = {k for k, v in expected.items() if v.startswith(str(private_dir()))}
    assert private and not private & set(config)
    for k in private:
        expected.pop(k)
    assert {k: config.get(k) for k in expected} == expected
    assert 1 <= int(config["RAY_SERVE_HAPROXY_NBTHREAD"]) <= 4
    assert config["RAY_SERVE_HAPROXY_BINARY_PATH"] == "/opt/genoray/haproxy/haproxy"
    # the image writes the wrapper with bind_wrapper("/opt/genoray/haproxy") (the manifest's comment)
    assert 'bind_wrapper("/opt/genoray/haproxy")' in (MANIFESTS / "raycluster-serve.yaml").read_text()
    assert bind_wrapper(tmp_path / "opt") == tmp_path / "opt" / "haproxy"
    for f, group, template in pod_templates():
        if f == "raycluster-serve.yaml":
            (c,) = template["spec"]["containers"]
            assert {"configMapRef": {"name": "genoray-serve-env"}} in c["envFrom"], group
            assert {"name": "GENORAY_INGRESS_SECRET", "valueFrom": {"secretKeyRef": {
                "name": "genoray-api-keys", "key": "GENORAY_INGRESS_SECRET"}}} in c["env"], group


DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def core_problems(doc: dict[str, Any]) -> list[str]:
    """The checks the API server makes on the few core objects here (ServiceAccount, ConfigMap,
    Service) that a YAML slip breaks: names, string maps, port numbers."""
    out = []
    meta = doc.get("metadata", {})
    if doc.get("apiVersion") != "v1" or doc.get("kind") not in ("ServiceAccount", "ConfigMap", "Service"):
        out.append(f"unexpected {doc.get('apiVersion')}/{doc.get('kind')}")
    if not DNS_LABEL.match(str(meta.get("name", ""))):
        out.append(f"metadata.name {meta.get('name')!r}")
    for field in ("labels", "annotations"):
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.get(field, {}).items()):
            out.append(f"metadata.{field}: strings only")
    if doc.get("kind") == "ConfigMap":
        bad = [k for k, v in doc.get("data", {}).items() if not isinstance(v, str)]
        out += [f"data.{k}: not a string (quote it)" for k in bad]
    if doc.get("kind") == "Service":
        spec = doc.get("spec", {})
        if spec.get("type", "ClusterIP") not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
            out.append(f"spec.type {spec.get('type')!r}")
        for p in spec.get("ports", []):
            for key in ("port", "targetPort"):
                v = p.get(key)
                if not (isinstance(v, int) and 1 <= v <= 65535) and not (key == "targetPort" and isinstance(v, str)):
                    out.append(f"spec.ports.{key} {v!r}")
    return out


def test_core_objects_are_well_formed():
    core = [(f, d) for f, d in all_documents() if d["apiVersion"] == "v1"]
    assert {d["kind"] for _, d in core} == {"ServiceAccount", "ConfigMap", "Service"}
    for f, d in core:
        assert not core_problems(d), (f, d["kind"], core_problems(d))
    config = copy.deepcopy(the("raycluster-serve.yaml", "ConfigMap"))
    config["data"]["RAY_SERVE_HAPROXY_RETRIES"] = 3        # unquoted in YAML: the API server refuses it
    assert core_problems(config) == ["data.RAY_SERVE_HAPROXY_RETRIES: not a string (quote it)"]
    svc = copy.deepcopy(the("raycluster-serve.yaml", "Service"))
    svc["spec"]["ports"][0]["port"] = 80000
    assert core_problems(svc) == ["spec.ports.port 80000"]
