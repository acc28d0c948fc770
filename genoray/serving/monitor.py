"""Per-replica drift metrics: requests, OOD rate over a sliding window and predicted class mix,
per bundle version.

:class:`DriftMonitor` keeps the window in memory (reported by ``/v1/info``) and, inside a Ray
Serve replica, exports Prometheus metrics through ``ray.serve.metrics`` (which adds the
deployment and replica tags), so a drift alert is a Prometheus rule, not extra code:

* ``genoray_requests_total{bundle_version}``: predict calls (batches) answered;
* ``genoray_predictions_total{bundle_version, label}``: predictions per predicted class (the mix);
* ``genoray_ood_total{bundle_version}``: predictions flagged out of distribution;
* ``genoray_ood_rate{bundle_version}``: share flagged among the last ``window`` predictions.

Outside a Serve replica (the local backend, tests), only the in-memory counts are kept.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from typing import Any


def _serve_metrics():
    """``ray.serve.metrics`` when running inside a Serve replica, else ``None``."""
    try:
        from ray import serve

        serve.get_replica_context()
        from ray.serve import metrics

        return metrics
    except Exception:
        return None


class DriftMonitor:
    """Counts per bundle version (see the module docstring)."""

    def __init__(self, window: int = 1000, export: bool | None = None):
        self.window = int(window)
        self._lock = threading.Lock()
        self._recent: dict[str, deque] = {}
        self._requests: Counter = Counter()
        self._labels: dict[str, Counter] = {}
        self._metrics = _serve_metrics() if export is None or export else None
        if self._metrics is not None:
            m = self._metrics
            keys = ("bundle_version",)
            self._m_requests = m.Counter("genoray_requests_total", description="predict calls answered", tag_keys=keys)
            self._m_preds = m.Counter("genoray_predictions_total", description="predictions per predicted class",
                                      tag_keys=("bundle_version", "label"))
            self._m_ood = m.Counter("genoray_ood_total", description="predictions flagged out of distribution",
                                    tag_keys=keys)
            self._m_rate = m.Gauge("genoray_ood_rate", description=f"OOD share of the last {self.window} predictions",
                                   tag_keys=keys)

    @property
    def exporting(self) -> bool:
        """Whether counts are also exported through ``ray.serve.metrics`` (inside a Serve replica)."""
        return self._metrics is not None

    def record(self, version: str, labels: list[str], ood: list[bool]) -> None:
        """Record one answered batch of predictions made with bundle ``version``."""
        with self._lock:
            recent = self._recent.setdefault(version, deque(maxlen=self.window))
            recent.extend(bool(v) for v in ood)
            mix = self._labels.setdefault(version, Counter())
            mix.update(str(v) for v in labels)
            self._requests[version] += 1
            rate = sum(recent) / len(recent) if recent else 0.0
        if self._metrics is not None:
            tags = {"bundle_version": version}
            self._m_requests.inc(1, tags=tags)
            for label, n in Counter(str(v) for v in labels).items():
                self._m_preds.inc(n, tags={"bundle_version": version, "label": label})
            if any(ood):
                self._m_ood.inc(sum(bool(v) for v in ood), tags=tags)
            self._m_rate.set(rate, tags=tags)

    def snapshot(self, version: str) -> dict[str, Any]:
        """In-memory view for ``/v1/info``: requests, window OOD rate, predicted class mix."""
        with self._lock:
            recent = self._recent.get(version, ())
            mix = self._labels.get(version, Counter())
            total = sum(mix.values())
            return {"requests": self._requests.get(version, 0), "window": self.window, "window_rows": len(recent),
                    "ood_rate_window": (sum(recent) / len(recent)) if recent else None,
                    "class_mix": {k: round(v / total, 6) for k, v in sorted(mix.items())} if total else {},
                    "prometheus": self.exporting}
