"""Bundles: versioned, verified, atomically published index + head pairs that the service
loads, on a local root or object storage alike.

Modules: :mod:`.manifest` (the root's layout, ``bundle.json``, ``CURRENT``), :mod:`.store`
(write, verify, publish, leases, garbage collection, listing) and :mod:`.groups` (shard groups
for an index that does not fit one replica).
"""

from genoray.bundle.groups import groups_of, shard_groups
from genoray.bundle.manifest import BundleManifest, Current, new_version_name
from genoray.bundle.store import (
    LEASE_TTL_S,
    collect_garbage,
    current_bundle,
    current_version,
    evict_unleased,
    lease,
    list_versions,
    live_leases,
    publish,
    read_version,
    release,
    verify_bundle,
    version_dir,
    version_uri,
    write_version,
)

__all__ = [
    "LEASE_TTL_S", "BundleManifest", "Current", "collect_garbage", "current_bundle", "current_version", "evict_unleased", "groups_of",
    "lease",
    "list_versions", "live_leases", "new_version_name", "publish", "read_version", "release", "shard_groups",
    "verify_bundle", "version_dir", "version_uri", "write_version",
]
