"""The `wdlab` command line: run | sweep | sweeps | bench | report | runs | rm | compare |
show | export | inspect | transfer | coordcheck | claims.

One subcommand per module (wdlab.cli.<command>: HELP, add_arguments, main). `main` here is
the one error boundary: every error a user can cause ends in one line on stderr naming the
problem and the fix, exit code 2, no traceback (an error raised in the user's own workload
code shows THEIR traceback above that line, wdlab's frames left out); an interrupt (Ctrl-C)
exits 130; anything else is a bug and keeps its traceback. Building the parser imports no
torch, so commands that neither train nor plot start fast.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Sequence

from wdlab import __version__
from wdlab.cli._args import EXIT_INTERRUPTED, Parser, fail, join_negative_numbers
from wdlab.cli._errors import user_message, user_traceback

__all__ = ["main", "build_parser", "COMMANDS"]

# command name -> module in wdlab.cli
COMMANDS = {
    "run": "run",
    "sweep": "sweep",
    "sweeps": "sweeps",
    "bench": "bench",
    "report": "report",
    "runs": "runs",
    "rm": "rm",
    "compare": "compare",
    "show": "show",
    "export": "export",
    "inspect": "inspect",
    "transfer": "transfer",
    "coordcheck": "coordcheck",
    "claims": "claims",
}


def build_parser(only: str | None = None) -> Parser:
    """The `wdlab` parser. With `only` (a command name, or "" for none), the other
    subcommands get their help line but not their options, which may import heavier modules
    (the sweep spec imports pydantic); `main` builds only the command it runs."""
    parser = Parser(
        prog="wdlab",
        description="wdlab: weight decay, normalization and learning-rate scale; train, "
        "sweep, score and report (exit codes: 0 done, 2 your error, 130 interrupted)",
    )
    parser.add_argument("--version", action="version", version=f"wdlab {__version__}")
    sub = parser.add_subparsers(
        dest="command", required=True, parser_class=Parser, metavar="COMMAND"
    )
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"wdlab.cli.{module_name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        p.set_defaults(handler=module.main)
        if only is None or only == name:
            module.add_arguments(p)
    return parser


def _command_of(argv: Sequence[str]) -> str:
    """The subcommand named in argv (the first token that is not an option), or ""."""
    for token in argv:
        if not token.startswith("-"):
            return token if token in COMMANDS else ""
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `wdlab` command; the return value is the exit code."""
    args = None
    bug: BaseException | None = None
    with warnings.catch_warnings(record=True) as caught:
        try:
            tokens = join_negative_numbers(sys.argv[1:] if argv is None else argv)
            args = build_parser(only=_command_of(tokens)).parse_args(tokens)
            code = args.handler(args)
        except KeyboardInterrupt:
            print("wdlab: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except Exception as exc:
            message = user_message(exc, args)
            if message is not None:
                detail = user_traceback(exc)
                if detail:  # an error in the user's own code: their frames, then the line
                    sys.stderr.write(detail)
                fail(message)  # the one line; warnings of the failed attempt are noise
            bug = exc
    _replay(caught)  # outside catch_warnings: replayed warnings are shown, not recorded again
    if bug is not None:
        raise bug
    return code


def _replay(caught: list[warnings.WarningMessage]) -> None:
    """Show the warnings a command raised (held back so a failed command prints one line)."""
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
