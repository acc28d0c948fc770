"""Serving: Ray Serve hosts the predictor over HTTP, batched and autoscaled, following the
bundle root's ``CURRENT`` with no downtime.

Modules: :mod:`.service` (the HTTP API: auth, limits, validation), :mod:`.backends` (what
answers it: in-process, Serve model replicas, HAProxy direct-ingress replicas), :mod:`.holder`
(the bundle a replica serves, watched and swapped), :mod:`.app` (the Serve application and
``genoray serve``), :mod:`.scatter` (searcher deployments per shard group), :mod:`.replica_memory`
(what each replica declares to Ray), :mod:`.haproxy` (the HAProxy ingress) and
:mod:`.monitor` (drift metrics per replica).
"""

from genoray.serving.app import build_app, run_service
from genoray.serving.backends import plain_app
from genoray.serving.holder import BundleHolder

__all__ = ["BundleHolder", "build_app", "plain_app", "run_service"]
