"""Nightly reindex as a Ray job (same arguments as `genoray reindex --help`).

    ray job submit --submission-id reindex-$(date +%F) --working-dir . -- \
        python jobs/reindex_nightly.py /data/labeled/*.parquet --work /data/genoray --bundles /data/bundles

Exit status 0: published; 4: the gate refused the new version (the current one keeps serving).
"""

import sys

from genoray.cli import main

if __name__ == "__main__":
    sys.exit(main(["reindex", *sys.argv[1:]]))
