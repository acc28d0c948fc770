"""The backends behind the HTTP API (:class:`genoray.serving.service.Backend`), and
:func:`predict_batch`, the one function every backend runs a batch of requests through.

* :class:`LocalBackend`: one in-process :class:`~genoray.serving.holder.BundleHolder` (a plain
  FastAPI app, the benchmark baseline: :func:`plain_app`);
* :class:`ServeBackend`: the ingress of ``ingress="proxy"``, forwarding to the model
  deployment's replicas and retrying a request on another replica when its replica dies;
* :class:`BatchedBackend`: a ``GenorayReplica`` of ``ingress="haproxy"``, its own bundle (or,
  for a shard-grouped bundle, its encoder and head and the groups' searcher handles),
  concurrent requests batched in-process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from genoray.config import ServiceLimits
from genoray.sequences.clean import InvalidSequence
from genoray.serving.holder import BundleHolder
from genoray.serving.service import PredictRequest, create_app

log = logging.getLogger(__name__)


def predict_batch(holder: BundleHolder, requests: list[PredictRequest]) -> list[dict[str, Any]]:
    """Run several requests as one predictor call (one bundle version for the whole batch).

    Each request's sequences are cleaned once, with the bundle's policy (the store's
    :class:`~genoray.config.CleanPolicy`); a request with a rejected sequence gets
    ``{"error": {"loc": ["sequences", i], "msg": reason}}`` (the API's 422) and does not
    disturb the others in its batch.
    """

    predictor, version = holder.snapshot()
    seqs: list[str] = []
    ids: list[str | None] = []
    spans: list[tuple[int, int] | dict[str, Any]] = []
    for r in requests:
        try:
            clean = predictor.clean(r.sequences)
        except InvalidSequence as e:
            spans.append({"loc": ["sequences", e.index], "msg": e.reason})
            continue
        spans.append((len(seqs), len(seqs) + len(clean)))
        seqs.extend(clean)
        ids.extend(r.ids if r.ids is not None else [None] * len(clean))
    valid = [r for r, span in zip(requests, spans) if isinstance(span, tuple)]
    preds = predictor.predict(seqs, ids=ids, k=max(r.k for r in valid), cleaned=True) if valid else []
    holder.monitor.record(version, [p.label for p in preds], [p.ood for p in preds])
    out = []
    for r, span in zip(requests, spans):
        if isinstance(span, dict):
            out.append({"bundle_version": version, "error": span, "replica": holder.replica})
            continue
        items = [p.to_dict() for p in preds[span[0]:span[1]]]
        for it in items:
            it["neighbours"] = it["neighbours"][: r.k]
        out.append({"bundle_version": version, "predictions": items, "replica": holder.replica})
    return out


async def predict_async(holder: BundleHolder, requests: list[PredictRequest]) -> list[dict[str, Any]]:
    """:func:`predict_batch` on a worker thread, so the event loop keeps serving meanwhile."""
    import asyncio

    return await asyncio.get_running_loop().run_in_executor(None, predict_batch, holder, requests)


class LocalBackend:
    """The :class:`~genoray.serving.service.Backend` of a plain app: one in-process
    :class:`~genoray.serving.holder.BundleHolder`; predictions run on a worker thread."""

    def __init__(self, holder: BundleHolder):
        self.holder = holder

    async def predict(self, req: PredictRequest) -> dict[str, Any]:
        """Predict one request on a worker thread."""
        return (await predict_async(self.holder, [req]))[0]

    async def info(self) -> dict[str, Any] | None:
        """The holder's bundle description."""
        return self.holder.describe()


class ServeBackend:
    """:class:`~genoray.serving.service.Backend` that forwards to the model deployment through its handle."""

    def __init__(self, model, timeout_s: float, retries: int):
        self.model, self.timeout_s, self.retries = model, timeout_s, retries

    async def _call(self, method: str, *args):
        from fastapi import HTTPException
        from ray.exceptions import ActorDiedError, ActorUnavailableError
        from ray.serve.exceptions import BackPressureError, ReplicaUnavailableError

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        for attempt in range(self.retries + 1):
            response = getattr(self.model, method).remote(*args)
            try:
                return await asyncio.wait_for(response, max(0.001, deadline - loop.time()))
            except BackPressureError:
                raise HTTPException(503, "all model replicas are busy; retry later",
                                    headers={"Retry-After": "1"}) from None
            except TimeoutError:
                response.cancel()
                raise HTTPException(504, f"prediction did not finish within {self.timeout_s:g} s") from None
            except (ActorDiedError, ActorUnavailableError, ReplicaUnavailableError) as e:
                log.warning("model replica lost during %s (attempt %d): %s", method, attempt + 1, type(e).__name__)
                if attempt == self.retries or loop.time() >= deadline:
                    raise HTTPException(503, "model replicas unavailable; retry later",
                                        headers={"Retry-After": "1"}) from e
                await asyncio.sleep(min(0.05 * 2**attempt, max(0.0, deadline - loop.time())))

    async def predict(self, req) -> dict[str, Any]:
        """Forward one request to a model replica (retried on another when it dies)."""
        return await self._call("predict", req)

    async def info(self) -> dict[str, Any] | None:
        """A model replica's bundle description, or ``None`` when none answers."""
        from fastapi import HTTPException

        try:
            return await self._call("info")
        except HTTPException:
            return None


class BatchedBackend:
    """:class:`~genoray.serving.service.Backend` of a ``GenorayReplica``: its own bundle, concurrent
    requests batched in-process (``@serve.batch``), 504 after ``timeout_s``. ``run`` answers one
    batch (:func:`predict_async` by default; over shard groups,
    :func:`genoray.serving.scatter.predict_groups_async`)."""

    def __init__(self, holder, timeout_s: float, max_batch_size: int, batch_wait_timeout_s: float,
                 run: Callable[[Any, list], Awaitable[list[dict[str, Any]]]] = predict_async):
        from ray import serve

        self.holder, self.timeout_s, self._run = holder, timeout_s, run
        self._batched = serve.batch(max_batch_size=max_batch_size,
                                    batch_wait_timeout_s=batch_wait_timeout_s)(self._predict_many)

    async def _predict_many(self, requests: list) -> list[dict[str, Any]]:
        return await self._run(self.holder, requests)

    async def predict(self, req) -> dict[str, Any]:
        """Batch this request with concurrent ones; 504 after ``timeout_s``."""
        from fastapi import HTTPException

        try:
            return await asyncio.wait_for(self._batched(req), self.timeout_s)
        except TimeoutError:
            raise HTTPException(504, f"prediction did not finish within {self.timeout_s:g} s") from None

    async def info(self) -> dict[str, Any] | None:
        """This replica's bundle description."""
        return self.holder.describe()


# The ingress replica's backend. Module-level so that the FastAPI routes (pickled with the app)
# and the deployment class (pickled separately) share it by reference within a replica process.
BACKEND: dict[str, Any] = {}


def set_backend(backend) -> None:
    """Install this replica process's backend (see :class:`IngressBackend`)."""
    BACKEND["backend"] = backend


class IngressBackend:
    """The backend the ingress app is built with: it forwards to whatever :func:`set_backend`
    installed in this replica process."""

    async def predict(self, req):
        """Forward to this replica's installed backend."""
        return await BACKEND["backend"].predict(req)

    async def info(self):
        """Forward to this replica's installed backend."""
        return await BACKEND["backend"].info()


def plain_app(root: str, require_key: bool = False, key_hashes: tuple[str, ...] = (), limits: dict | None = None):
    """The same API as a plain FastAPI app without Serve or batching (benchmark baseline)."""
    return create_app(LocalBackend(BundleHolder(root)), key_hashes=key_hashes, require_key=require_key,
                      limits=ServiceLimits(**(limits or {})))


