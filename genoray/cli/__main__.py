"""``python -m genoray.cli``: the ``genoray`` command."""

import sys

from genoray.cli.commands import main

sys.exit(main())
