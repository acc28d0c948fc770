"""Exit status of every ``genoray`` command (also in the README and ``genoray --help``)."""

from __future__ import annotations

EXIT_OK = 0
EXIT_USAGE = 2  # bad flags or settings, unreadable or malformed input that stops the job, missing files
EXIT_PARTIAL = 3  # some input files failed (listed); the rest was written
EXIT_GATE = 4  # reindex: the gate failed, nothing published (the current bundle keeps serving); plan: does not fit
EXIT_SHIFT = 5  # shift: the new data is distributed differently
EXIT_EMPTY = 6  # nothing was written (no input records, every record rejected, every file failed)
EXIT_BUG = 70  # a broken internal invariant or an unexpected exception: a bug in genoray, please report it
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGINT
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_USAGE: "usage or input error: bad flag or setting, missing/malformed input file (one line on stderr)",
    EXIT_PARTIAL: "partial: some input files failed and are listed; the rest was written",
    EXIT_GATE: "reindex: gate failed, nothing published; plan: the plan does not fit the cluster",
    EXIT_SHIFT: "shift: distribution shift detected",
    EXIT_EMPTY: "nothing written: no record survived reading/cleaning or every file failed (--allow-empty: 0)",
    EXIT_BUG: "internal error (a bug or broken invariant in genoray; -v shows the traceback)",
    EXIT_INTERRUPTED: "interrupted",
}


class NothingWritten(Exception):
    """A job finished without writing anything (exit 6 unless ``--allow-empty``)."""
