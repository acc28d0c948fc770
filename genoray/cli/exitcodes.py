"""Exit status of every ``genoray`` command (also in docs/usage.md and ``genoray --help``)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from genoray.infra.artifacts import strict_json
from genoray.infra.progress import QUIET_ENV

EXIT_OK = 0
EXIT_USAGE = 2  # bad flags or settings, unreadable or malformed input that stops the job, missing files
EXIT_PARTIAL = 3  # some input files failed (listed); the rest was written
EXIT_GATE = 4  # reindex: the gate failed, nothing published (the current bundle keeps serving); plan: does not fit
EXIT_SHIFT = 5  # shift: the new data is distributed differently
EXIT_EMPTY = 6  # nothing was written (no input records, every record rejected, every file failed)
EXIT_CUT_OFF = 7  # serve: stopped on SIGTERM/SIGINT, but in-flight requests were cut off (drain timed out, or a second signal)
EXIT_BUG = 70  # a broken internal invariant or an unexpected exception: a bug in genoray, please report it
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGINT
EXIT_TERMINATED = 143  # SIGTERM (128 + 15): stopped cleanly; embed, index, reindex, quickstart: rerun to resume
EXIT_KILLED = 137  # a second SIGTERM/SIGINT while stopping: the command was SIGKILLed (128 + 9); a rerun still resumes
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_USAGE: "usage or input error: bad flag or setting, missing/malformed input file (one line on stderr)",
    EXIT_PARTIAL: "partial: some input files failed and are listed; the rest was written",
    EXIT_GATE: "reindex: gate failed, nothing published; plan: the plan does not fit the cluster",
    EXIT_SHIFT: "shift: distribution shift detected",
    EXIT_EMPTY: "nothing written: no record survived reading/cleaning or every file failed (--allow-empty: 0)",
    EXIT_CUT_OFF: "serve stopped on SIGTERM/SIGINT but cut off in-flight requests: the drain timed out "
                  "(--graceful-shutdown-timeout-s) or a second signal forced the exit",
    EXIT_BUG: "internal error (a bug or broken invariant in genoray; -v shows the traceback)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C, SIGINT): stopped like 143",
    EXIT_KILLED: "a second SIGTERM/SIGINT while stopping: killed at once (what was committed is kept)",
    EXIT_TERMINATED: "stopped by SIGTERM: work stopped, Ray shut down, temp dirs removed; what was committed is "
                     "kept and rerunning the same command resumes (embed: finished units are skipped)",
}


class NothingWritten(Exception):
    """A job finished without writing anything (exit 6 unless ``--allow-empty``)."""


def why_empty(read: int, rejected: dict[str, int], failed: list[dict], units: int, inputs: Sequence[str] = ()) -> str:
    """One line saying why a job wrote nothing (every file failed, no records in ``inputs``, or
    every record rejected, by reason)."""
    if failed and len(failed) == units:
        return f"every input file failed; first: {failed[0]['error']}"
    if read == 0:
        names = ", ".join(map(str, inputs[:3])) + (f" and {len(inputs) - 3} more" if len(inputs) > 3 else "")
        return (f"{names or 'the input'}: no records (an empty file? give FASTA, FASTQ or a TSV/CSV/Parquet "
                f"with a sequence column)" + (f"; {len(failed)} of {units} units failed" if failed else ""))
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(rejected.items(), key=lambda kv: -kv[1]))
    hint = " (protein or other non-DNA input?)" if max(rejected, key=lambda r: rejected[r], default="") == "invalid_character" else ""
    return f"all {read} records were rejected: {reasons}{hint}"


def nothing_written(a: Any, why: str) -> None:
    """Raise :class:`NothingWritten` (exit 6) unless the command got ``--allow-empty``, then warn."""
    if not getattr(a, "allow_empty", False):
        raise NothingWritten(why)
    note(f"genoray {a.command}: warning: nothing written: {why}")


def set_quiet(quiet: bool) -> None:
    """``-q``: from now on :func:`note` and progress lines print nothing (only the result and
    errors reach the user); set in the environment, so a supervised child is quiet too."""
    if quiet:
        os.environ[QUIET_ENV] = "1"
    else:
        os.environ.pop(QUIET_ENV, None)


def note(text: str) -> None:
    """Print a diagnostic line (a summary, a hint, a warning) on stderr, unless ``-q``."""
    if not os.environ.get(QUIET_ENV):
        print(text, file=sys.stderr)


NAN_REASON = ("undefined for this data, written as null (AUROC needs both classes in the test split; "
              "MCC and F1 need predictions and labels of more than one class)")


def print_result(obj, as_json: bool, text: str | None = None) -> None:
    """Print a command's result: strict JSON (``NaN`` written as null, with a note on stderr
    naming the fields) when ``as_json`` or there is no ``text`` form, else ``text``."""
    clean, replaced = strict_json(obj)
    if as_json or text is None:
        print(json.dumps(clean, indent=2, default=str, allow_nan=False))
    else:
        print(text)
    if replaced:
        note(f"note: {', '.join(replaced)}: {NAN_REASON}")
