"""The Ray side of the embedding job: an actor pool (``EmbedUnits``, one encoder per actor)
that runs whole units through :func:`genoray.embedding.unit.process_unit` on Ray Data.

Fractional CPUs on CPU-only hosts (an actor pool of N x 1 CPU on N cores deadlocks the read
stage), one GPU per actor for transformers encoders when the cluster has GPUs (refused on a
GPU-less cluster unless ``allow_cpu``), an elastic pool with ``max_actors``, and model weights
hashed once per job by the driver and handed to the actors.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from genoray.config import EmbedConfig, ReadConfig, parse, to_dict
from genoray.embedding.shards import UnitFailure, UnitMarker, unit_json, unit_result
from genoray.embedding.unit import TORCH_ENCODERS, process_unit
from genoray.encoders import encoder_from_spec
from genoray.encoders.hf import trust_weights_hint, weights_hint
from genoray.infra import fs
from genoray.infra.runtime import init_ray, tune_allocator
from genoray.infra.stopping import raise_if_stopped


class EmbedUnits:
    """Ray Data callable class: one encoder per actor; each call processes whole units."""

    def __init__(self, encoder_spec: dict[str, Any], read_cfg: dict[str, Any], shard_dir: str, batch_size: int,
                 torch_threads: int = 1, prefetch_batches: int = 0, weights_hints: list | None = None,
                 trust_remote_code: bool = False):
        tune_allocator()
        if encoder_spec.get("type") in TORCH_ENCODERS:  # torch is only imported for transformers encoders
            import torch

            torch.set_num_threads(max(1, torch_threads))
            for hint in weights_hints or []:  # weights hashed once per job, by the driver
                trust_weights_hint(hint)
        self.encoder = encoder_from_spec(encoder_spec, trust_remote_code)  # the driver's command decided
        self.read_cfg = parse(ReadConfig, read_cfg)
        self.shard_dir = fs.as_path(shard_dir)
        self.batch_size = batch_size
        self.prefetch_batches = prefetch_batches

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = []
        for unit_text in batch["unit"]:
            unit = json.loads(unit_text)
            out.append(json.dumps(unit_json(process_unit(unit, self.encoder, self.read_cfg, self.shard_dir,
                                                         self.batch_size, self.prefetch_batches))))
        return {"summary": np.array(out, dtype=object)}


def run_on_ray(pending: list[dict[str, Any]], spec: dict[str, Any], read_cfg: ReadConfig, shard_dir: str | Path,
                cfg: EmbedConfig, trust_remote_code: bool = False) -> Iterator[UnitMarker | UnitFailure]:
    """Run ``pending`` units on a Ray Data actor pool (one encoder load per actor); yields each
    unit's result as it commits. ``trust_remote_code``: what the driver's command decided for its
    encoder (the actors rebuild it from its spec, whose recorded value enables nothing)."""
    import ray
    import ray.data

    init_ray()
    if ray.data.DataContext.get_current().max_errored_blocks != 0:
        # with errored blocks allowed Ray Data drops whole blocks and still reports success
        raise ValueError("DataContext.max_errored_blocks must be 0: genoray never drops records silently")
    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 1.0), resources.get("GPU", 0.0)
    torch_encoder = spec["type"] in TORCH_ENCODERS
    if torch_encoder and not gpus and cfg.gpus_per_actor is None and not cfg.allow_cpu:
        raise RuntimeError(f"the Ray cluster has no GPU ({cpus:g} CPUs) and the encoder is a transformers model, "
                           "which is about 100x slower on CPUs: start GPU nodes, or pass --allow-cpu "
                           "(EmbedConfig(allow_cpu=True)) to run it on CPU actors anyway")
    num_gpus = cfg.gpus_per_actor if cfg.gpus_per_actor is not None else (1.0 if torch_encoder and gpus else 0.0)
    if cfg.num_actors:
        n_actors = cfg.num_actors
    elif num_gpus:
        n_actors = max(1, int(gpus / num_gpus))
    else:
        n_actors = max(1, int(cpus))
    n_actors = max(1, min(n_actors, len(pending)))
    # Fractional CPUs: actors must never hold every CPU, or the read stage cannot be scheduled
    # and the pipeline hangs silently (2-CPU deadlock).
    cpus_per_actor = cfg.cpus_per_actor or max(0.1, min(1.0, (cpus - 1) / n_actors))
    remote_kw: dict[str, Any] = {}
    if fs.is_remote(shard_dir) or any(fs.is_remote(u["path"]) for u in pending):
        # actors on other nodes use their own credential chain; hand them this driver's
        # endpoint and region only (never credentials: fs.forwarded_env)
        remote_kw["runtime_env"] = {"env_vars": fs.forwarded_env()}
    items = ray.data.from_items([{"unit": json.dumps(u)} for u in pending], override_num_blocks=len(pending))
    ds = items.map_batches(
        EmbedUnits,
        fn_constructor_kwargs={"encoder_spec": spec, "read_cfg": to_dict(read_cfg), "shard_dir": str(shard_dir),
                               "batch_size": cfg.batch_size, "torch_threads": max(1, int(cpus_per_actor)),
                               "prefetch_batches": cfg.read_ahead(gpu=bool(num_gpus)),
                               "weights_hints": _weights_hints(spec),
                               "trust_remote_code": trust_remote_code},
        batch_size=1,
        # elastic with max_actors: nodes and GPUs that join later get actors (Ray Data autoscales the pool)
        compute=(ray.data.ActorPoolStrategy(min_size=n_actors, max_size=max(cfg.max_actors, n_actors))
                 if cfg.max_actors else ray.data.ActorPoolStrategy(size=n_actors)),
        num_cpus=cpus_per_actor,
        num_gpus=num_gpus,
        **remote_kw,
    )
    for row in ds.iter_rows():
        yield unit_result(json.loads(row["summary"]))
    raise_if_stopped()  # a Ctrl-C that landed in the iterator's teardown (__del__) was dropped there


def _weights_hints(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Digests of the local model weights the driver already hashed (see ``trust_weights_hint``)."""
    if spec["type"] not in TORCH_ENCODERS:
        return []

    models = [spec] if spec["type"] == "hf" else [spec["model"]]
    hints = [weights_hint(m["config"]["model"]) for m in models if m.get("type") == "hf"]
    return [h for h in hints if h]
