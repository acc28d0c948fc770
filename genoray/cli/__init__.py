"""The ``genoray`` command line: :mod:`.commands` (one function per command, each calling the
stage function the Python API calls), :mod:`.args` (the parser and the config groups each
command exposes), :mod:`.flags` (flags generated from the config dataclasses), :mod:`.exitcodes`
and :mod:`.quiet` (Ray's messages kept off the user's stderr; the Ray a command started stopped)."""

from genoray.cli.commands import main

__all__ = ["main"]
