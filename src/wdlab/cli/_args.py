"""argparse pieces every subcommand shares: the one-line parser, value types, argv fixes."""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Sequence
from typing import NoReturn

from wdlab._names import DECAY_MODES  # noqa: F401 - re-exported for the subcommands
from wdlab.cli.tables import clean

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
MAX_SEED = 2**63 - 1  # SQLite INTEGER and torch.manual_seed both take it

# A token that can only be a (negative) number, never an option: options start with a letter.
_NEGATIVE_NUMBER = re.compile(r"^-(\d|\.\d|inf|nan)", re.IGNORECASE)


_INVALID_CHOICE = re.compile(r"invalid choice: '([^']*)' \(choose from (.*)\)$")
_UNRECOGNIZED = re.compile(r"unrecognized arguments: (\S+)")


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line instead of usage plus message, with a
    did-you-mean for a mistyped subcommand, choice or option."""

    def format_help(self) -> str:
        """argparse's help, with an epilog computed only when help is shown (a subcommand
        sets `epilog_factory`: listing config keys and optimizers imports torch)."""
        factory = getattr(self, "epilog_factory", None)
        if factory is not None:
            self.epilog = factory()
        return super().format_help()

    def error(self, message: str) -> NoReturn:
        message += self._suggestion(message)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {clean(message)} (see {self.prog} --help)\n")

    def _option_strings(self) -> list[str]:
        """This parser's long options and those of its subcommands' parsers."""
        out = [o for o in self._option_string_actions if o.startswith("--")]
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    out += [o for o in sub._option_string_actions if o.startswith("--")]
        return sorted(set(out))

    def _suggestion(self, message: str) -> str:
        from wdlab._suggest import did_you_mean

        choice = _INVALID_CHOICE.search(message)
        if choice:
            return did_you_mean(choice.group(1), re.findall(r"'([^']*)'", choice.group(2)))
        unknown = _UNRECOGNIZED.search(message)
        if unknown and unknown.group(1).startswith("--"):
            return did_you_mean(unknown.group(1).partition("=")[0], self._option_strings())
        return ""


def fail(message: str) -> NoReturn:
    """Print the one error line and exit with the usage code."""
    print(f"wdlab: error: {clean(message)}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def join_negative_numbers(argv: Sequence[str]) -> list[str]:
    """`--lr -1e-3` -> `--lr=-1e-3`.

    argparse takes a token that starts with '-' for an option unless it looks like a plain
    negative number (`-1`, `-0.5`); `-1e-3`, `-inf` and sweep axes like `-1,1` are read as
    unknown flags. No wdlab option starts with a digit, so such a token after a long option
    is always that option's value."""
    out: list[str] = []
    items = list(argv)
    i = 0
    while i < len(items):
        token = items[i]
        if token == "--":
            out.extend(items[i:])
            break
        nxt = items[i + 1] if i + 1 < len(items) else None
        if (
            token.startswith("--")
            and "=" not in token
            and nxt is not None
            and _NEGATIVE_NUMBER.match(nxt)
        ):
            out.append(f"{token}={nxt}")
            i += 2
            continue
        out.append(token)
        i += 1
    return out


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be between 0 and 2**63-1, got {text}")
    return value


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


class LazyChoices(Sequence[str]):
    """argparse `choices` read from a module only when a value is checked or help is shown,
    so that building the parser does not import that module (and torch with it)."""

    def __init__(self, module: str, attribute: str) -> None:
        self.module, self.attribute = module, attribute

    def _values(self) -> Sequence[str]:
        import importlib

        return tuple(getattr(importlib.import_module(self.module), self.attribute))

    def __getitem__(self, index):  # type: ignore[override]
        return self._values()[index]

    def __len__(self) -> int:
        return len(self._values())

    def __contains__(self, value: object) -> bool:
        return value in self._values()

    def __iter__(self):  # type: ignore[override]
        return iter(self._values())


RULES = LazyChoices("wdlab.scaling", "RULES")


def store_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default="wdlab.db", help="run store (SQLite file; default wdlab.db)")
