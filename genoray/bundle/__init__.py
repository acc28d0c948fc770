"""Bundles: versioned, verified, atomically published index + head pairs that the service
loads, on a local root or object storage alike.

Modules: :mod:`.manifest` (the root's layout, ``bundle.json``, ``CURRENT``), :mod:`.versions`
(reading ``CURRENT``, ``bundle.json`` and leases), :mod:`.objects` (content-addressed objects
of a root and of a node's cache), :mod:`.store` (write, verify, publish, garbage collection,
listing) and :mod:`.groups` (shard groups for an index that does not fit one replica).
"""

from genoray.bundle.groups import groups_of, shard_groups
from genoray.bundle.manifest import BundleManifest, Current, new_version_name
from genoray.bundle.store import (
    collect_garbage,
    evict_unleased,
    list_versions,
    local_copy,
    publish,
    verify_bundle,
    version_dir,
    write_version,
)
from genoray.bundle.versions import (
    LEASE_TTL_S,
    current_bundle,
    current_version,
    file_uri,
    lease,
    live_leases,
    read_version,
    release,
    version_uri,
)

__all__ = [
    "LEASE_TTL_S", "BundleManifest", "Current", "collect_garbage", "current_bundle", "current_version", "evict_unleased", "file_uri", "groups_of",
    "lease",
    "list_versions", "live_leases", "local_copy", "new_version_name", "publish", "read_version", "release", "shard_groups",
    "verify_bundle", "version_dir", "version_uri", "write_version",
]
