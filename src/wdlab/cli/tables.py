"""The one way the CLI prints: tables and lines whose stored strings are never markup.

A run may be named `[/]` or `[link=https://…]`, and any stored string (names, messages,
config values, errors) may hold control characters such as ESC. rich would read the first
two as markup (a crash, a hyperlink) and a terminal would obey the third. So every value
goes into a `rich.text.Text` (plain text, no markup parsing) after `clean` has made control
characters visible; styles come only from this module's callers, never from data.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from wdlab._text import clean

__all__ = ["clean", "text", "line", "console", "say", "print_table"]

def text(value: Any, style: str | None = None) -> Any:
    """A rich Text of `value` that rich never parses as markup."""
    from rich.text import Text

    return Text(clean(value), style=style or "")


def line(*parts: Any) -> Any:
    """One line from pieces: a plain value, or (value, style) for a styled piece."""
    from rich.text import Text

    out = Text()
    for part in parts:
        if isinstance(part, tuple):
            value, style = part
            out.append(clean(value), style=style)
        else:
            out.append(clean(part))
    return out


def console(stream: TextIO | None = None) -> Any:
    """A rich Console for stdout (or `stream`) that does not colour numbers on its own."""
    from rich.console import Console

    return Console(file=stream or sys.stdout, highlight=False)


def say(*parts: Any, stream: TextIO | None = None) -> None:
    """Print one line built by `line`."""
    console(stream).print(line(*parts), soft_wrap=True)


def print_table(
    title: Any,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    right: Iterable[str] = (),
    whole: Iterable[str] = ("id",),
    stream: TextIO | None = None,
) -> None:
    """A table whose title, headers and cells are all plain text. Columns named in `right`
    are right-aligned (numbers); columns named in `whole` (ids) are never wrapped or cut,
    however narrow the terminal: the other columns give way."""
    from rich.table import Table

    right, whole = set(right), set(whole)
    rows = [list(r) for r in rows]
    table = Table(title=text(title))
    for i, column in enumerate(columns):
        keep = column in whole
        width = max([len(clean(column))] + [len(clean(r[i])) for r in rows if i < len(r)])
        table.add_column(text(column), justify="right" if column in right else "left",
                         no_wrap=keep, min_width=width if keep else None)
    for row in rows:
        table.add_row(*(text("" if value is None else value) for value in row))
    out = console(stream)
    if not out.is_terminal:  # a pipe or a file: as wide as the content, so ids stay whole
        out.width = 100_000
    out.print(table)
