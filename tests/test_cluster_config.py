"""cluster.yaml is a valid Ray launcher config with token auth and a private dashboard."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_cluster_yaml_validates_against_ray_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(prepare_config(cfg))
    gpu = cfg["available_node_types"]["gpu_worker"]
    assert gpu["resources"]["GPU"] >= 1 and gpu["max_workers"] > gpu["min_workers"] >= 0
    assert cfg["available_node_types"]["head"]["resources"] == {"CPU": 0}


def test_token_auth_on_and_dashboard_not_public():
    text = (ROOT / "cluster.yaml").read_text()
    cfg = yaml.safe_load(text)
    starts = cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts)
    assert "0.0.0.0" not in text
    assert any("--dashboard-host=127.0.0.1" in c for c in cfg["head_start_ray_commands"])
    assert any("genoray[gpu]" in c for c in cfg["setup_commands"])


def test_jobs_are_thin_entrypoints_over_the_cli():
    for job in (ROOT / "jobs").glob("*.py"):
        text = job.read_text()
        assert "from genoray.cli import main" in text and len(text.splitlines()) < 30, job


PRIVATE = ("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", "RAY_SERVE_HAPROXY_SOCKET_PATH", "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH",
           "RAY_SERVE_HAPROXY_SERVER_STATE_BASE", "RAY_SERVE_HAPROXY_SERVER_STATE_FILE")


def test_haproxy_settings_documented_for_the_cluster():
    from genoray.serving.haproxy import haproxy_env

    text = (ROOT / "cluster.yaml").read_text()
    for key, value in haproxy_env().items():
        assert key in text, key
        if key not in ("RAY_SERVE_HAPROXY_NBTHREAD", "RAY_SERVE_HAPROXY_BINARY_PATH",  # the node's cores, home
                       "GENORAY_INGRESS_SECRET",  # random: one per cluster
                       *PRIVATE):  # the node user's 0700 directory
            assert f"{key}={value}" in text or f'{key}="{value}"' in text, key
        elif key in PRIVATE:
            assert f"{key}=/tmp/gr-hap-1000" in text, key
