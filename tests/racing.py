"""Racing writers in tests: start ``fn(arg)`` for every ``arg`` in its own thread at once and
collect who won (returned) and who lost (raised)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any


def race(fn: Callable[[Any], Any], args: Iterable[Any], join_s: float
         ) -> tuple[list[Any], list[BaseException], dict[Any, BaseException | None]]:
    """``(winners, losers, results)``: the args whose call returned, the exceptions of those
    that raised, and each arg's outcome (``None`` or its exception)."""
    results: dict[Any, BaseException | None] = {}

    def run(a: Any) -> None:
        try:
            fn(a)
            results[a] = None
        except BaseException as e:  # noqa: BLE001 - the test inspects it
            results[a] = e

    threads = [threading.Thread(target=run, args=(a,)) for a in args]
    for t in threads:
        t.start()
    for t in threads:
        t.join(join_s)
    return ([a for a, e in results.items() if e is None], [e for e in results.values() if e is not None], results)
