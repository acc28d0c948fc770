"""Parse a ``genoray`` command line: ``--config FILE`` and ``-q``/``-v`` for every command.

``--config FILE`` (before or after the command name) names a YAML mapping whose keys are the
command's long flag names without ``--`` (``-`` or ``_``: ``read-batch-size`` or
``read_batch_size``; a positional argument by its name, e.g. ``inputs``) and whose values are
written as on the command line: a scalar, ``true``/``false`` for a switch, a list for a flag or
input that takes several values (a tuple setting such as ``--shard-sizes`` also takes a list).
The file's values become the parser's defaults, so a flag given on the command line wins, and
a required flag or input may come from the file. It works from the argparse parser itself, so
every command (and every flag a config dataclass adds) gets it. An unknown key, a value of the
wrong type or a file that is not a mapping is a usage error (exit 2) naming the file and key.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from genoray.cli.args import RemovedFlag
from genoray.cli.exitcodes import set_quiet
from genoray.cli.flags import GIVEN
from genoray.cli.stdio import resolve_stdio

NOT_FROM_FILE = frozenset({"help", "version", "config"})  # dests a config file may not set


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def find_config(parser: argparse.ArgumentParser, argv: Sequence[str]) -> tuple[str, str] | None:
    """``(command, FILE)`` when ``argv`` names a command and gives ``--config FILE`` (before or
    after the command name; the last one counts), else ``None`` (argparse reports what is wrong)."""
    commands = _subparsers(parser)
    command, path = None, None
    it = iter(argv)
    for tok in it:
        if tok == "--":
            break
        if tok == "--config":
            path = next(it, None)
        elif tok.startswith("--config="):
            path = tok.split("=", 1)[1]
        elif command is None and tok in commands:
            command = tok
    return (command, path) if command and path else None


def _long_name(action: argparse.Action) -> str | None:
    if not action.option_strings:
        return action.dest
    longs = [s[2:] for s in action.option_strings if s.startswith("--")]
    return longs[0] if longs else None


def config_keys(sub: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every key a config file may give for the command of ``sub``: each long flag name (all
    aliases) and each positional's name, with ``_`` and ``-`` both accepted."""
    keys: dict[str, argparse.Action] = {}
    for action in sub._actions:
        if action.dest in NOT_FROM_FILE or isinstance(action, RemovedFlag):
            continue
        names = [s[2:] for s in action.option_strings if s.startswith("--")] if action.option_strings \
            else [action.dest]
        for n in names:
            keys[n] = keys[n.replace("-", "_")] = action
    return keys


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the key."""


def _scalar(action: argparse.Action, key: str, v: Any, where: str) -> Any:
    if isinstance(v, bool) or isinstance(v, dict) or (isinstance(v, list) and action.metavar != "A,B,..."):
        kind = "true/false" if isinstance(v, bool) else type(v).__name__
        raise ConfigError(f"{where}: key {key!r}: expected {action.metavar or 'a value'} as on the command line "
                          f"(--{_long_name(action)}), got a {kind}: {v!r}")
    text = ",".join(map(str, v)) if isinstance(v, list) else "none" if v is None else str(v)
    try:
        out = action.type(text) if callable(action.type) else text
    except (argparse.ArgumentTypeError, ValueError, TypeError) as e:
        raise ConfigError(f"{where}: key {key!r}: {e or 'invalid value'} ({v!r})") from None
    if action.choices is not None and out not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise ConfigError(f"{where}: key {key!r}: {v!r} is not one of {choices}")
    return out


def _value(action: argparse.Action, key: str, v: Any, where: str) -> Any:
    """The parsed value of one config entry for ``action`` (a usage error when it cannot be one)."""
    if action.nargs == 0:  # a switch: store_true, or a --no-X that stores False
        if not isinstance(v, bool):
            raise ConfigError(f"{where}: key {key!r}: expected true or false (a switch), got {v!r}")
        return action.const if v else (not action.const if isinstance(action.const, bool) else action.default)
    if action.nargs in ("+", "*"):
        items = v if isinstance(v, list) else [v]
        if action.nargs == "+" and not items:
            raise ConfigError(f"{where}: key {key!r}: needs at least one value")
        return [_scalar(action, key, x, where) for x in items]
    return _scalar(action, key, v, where)


FromFile = dict[str, tuple[argparse.Action, Any]]  # dest -> (its action, the file's parsed value)


def load_config(sub: argparse.ArgumentParser, path: str) -> FromFile:
    """Read ``path`` (YAML, ``yaml.safe_load``) and return ``{dest: (action, parsed value)}``
    for the command of ``sub``; raises :class:`ConfigError` naming the file and the key."""
    where = f"--config {path}"
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise ConfigError(f"{where}: cannot read it: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of flag names to values (key: value lines), "
                          f"got a {type(data).__name__}")
    keys = config_keys(sub)
    out: FromFile = {}
    for key, v in data.items():
        action = keys.get(str(key))
        if action is None:
            close = difflib.get_close_matches(str(key).replace("_", "-"), [k for k in keys if "_" not in k], n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; see genoray {sub.prog.split()[-1]} --help"
            raise ConfigError(f"{where}: unknown key {key!r} for this command{hint}")
        out[action.dest] = (action, _value(action, str(key), v, where))
    return out


def apply_config(values: FromFile) -> None:
    """Make the config's values the defaults of ``sub``: a flag given on the command line
    overrides them, and a required flag or input the file gives is no longer required."""
    for action, value in values.values():
        action.default = value
        action.required = False
        if not action.option_strings:  # a positional given by the file: optional on the command line
            action.nargs = {None: "?", "+": "*"}.get(action.nargs, action.nargs)  # type: ignore[arg-type]


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` (default ``sys.argv[1:]``) with ``--config FILE`` applied, check that
    ``-q`` and ``-v`` are not both given (usage errors exit 2), set quiet output, and read an
    input of ``-`` from stdin (:mod:`genoray.cli.stdio`); ``args.argv`` is the command line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    found = find_config(parser, argv)
    from_file: FromFile = {}
    if found:
        sub = _subparsers(parser)[found[0]]
        try:
            from_file = load_config(sub, found[1])
        except ConfigError as e:
            sub.error(str(e))
        apply_config(from_file)
    args = parser.parse_args(argv)
    if getattr(args, "quiet", False) and getattr(args, "verbose", False):
        parser.error("give -q (only the result and errors) or -v (progress and tracebacks), not both")
    marked: set[str] = getattr(args, GIVEN, set())
    setattr(args, GIVEN, marked | set(from_file))  # set by the file: given, not a default
    set_quiet(bool(getattr(args, "quiet", False)))
    args.argv = resolve_stdio(args, argv)  # genoray serve and batch jobs run themselves again as a child
    return args
