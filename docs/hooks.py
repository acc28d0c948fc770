"""mkdocs hook: fills the reference page from the code (argparse help of every command, the
fields and defaults of every config dataclass, the exit codes), so the docs cannot drift."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _exit_codes() -> str:
    from genoray.cli.exitcodes import EXIT_CODES

    return "\n".join(["| code | meaning |", "|---|---|"] + [f"| {c} | {m} |" for c, m in EXIT_CODES.items()])


def _configs() -> str:
    import genoray.config as config

    out = []
    for name in config.__all__:
        cls = getattr(config, name)
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            continue
        out += [f"### {name}", "", (cls.__doc__ or "").strip().split("\n\n")[0], "",
                "| field | type | default |", "|---|---|---|"]
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                default = repr(f.default)
            elif f.default_factory is not dataclasses.MISSING:
                default = repr(f.default_factory())
            else:
                default = "(required)"
            kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            out.append(f"| `{f.name}` | `{kind}` | `{default}` |".replace("|`", "| `"))
        out.append("")
    return "\n".join(out)


def _commands() -> str:
    from genoray.cli.commands import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.choices and isinstance(a.choices, dict))
    out = ["```text", parser.format_help().rstrip(), "```", ""]
    for name, p in sub.choices.items():
        out += [f"### genoray {name}", "", "```text", p.format_help().rstrip(), "```", ""]
    return "\n".join(out)


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    """Fill the ``<!-- include: ... -->`` and ``<!-- generated: ... -->`` markers, and point links
    written for GitHub (the README's ``docs/X``, the docs' ``../SECURITY.md``) at site pages."""
    for name in ("README.md", "SECURITY.md"):
        marker = f"<!-- include: {name} -->"
        if marker in markdown:
            text = (ROOT / name).read_text()
            text = text.split("\n", 1)[1] if text.startswith("# ") else text  # the page has its title
            text = text.replace("](SECURITY.md)", "](security.md)")
            # other files of the repository root (LICENSE, CHANGELOG.md, ...) are not site pages
            text = re.sub(r"\[([^\]]+)\]\((?!docs/|security\.md|https?:)([^)]+)\)", r"\1 (`\2` in the repository)", text)
            markdown = markdown.replace(marker, text)
    markdown = markdown.replace("](docs/", "](").replace("](../SECURITY.md)", "](security.md)")
    if page.file.src_uri != "reference.md":
        return markdown
    for marker, make in (("exit-codes", _exit_codes), ("configs", _configs), ("commands", _commands)):
        markdown = markdown.replace(f"<!-- generated: {marker} -->", make())
    return markdown
