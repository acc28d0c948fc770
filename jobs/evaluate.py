"""Ray job entrypoint for `genoray evaluate` (same arguments; see `genoray evaluate --help`).

    ray job submit --working-dir . -- python jobs/evaluate.py ...

Connects to the cluster named by RAY_ADDRESS (set by `ray job submit`); the work is done by
the same function the CLI and the Python API call.
"""

import sys

from genoray.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
