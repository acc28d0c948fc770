"""Ray job entrypoint for `genoray index` (same arguments; see `genoray index --help`).

    ray job submit --working-dir . -- python jobs/build_index.py ...

Connects to the cluster named by RAY_ADDRESS (set by `ray job submit`); the work is done by
the same function the CLI and the Python API call.
"""

import sys

from genoray.cli import main

if __name__ == "__main__":
    sys.exit(main(["index", *sys.argv[1:]]))
