"""What every command shares: the one-line error, argument types, .npy input, the shape of a command's help."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Sequence

import numpy as np

FORMATTER = argparse.RawDescriptionHelpFormatter

Handler = Callable[[argparse.Namespace], int]


class CliError(Exception):
    """A problem with what the command line asked for; reported as one line, exit 2."""


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def note(message: str) -> None:
    print(f"fpmatch: {message}", file=sys.stderr)


def load_array(path: str, what: str) -> np.ndarray:
    """One array from a .npy file (no pickles)."""
    try:
        value = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise CliError(f"{what} file not found: {path}") from None
    except (OSError, ValueError, EOFError) as exc:
        raise CliError(f"cannot read {what} file {path} as .npy: {one_line(exc)}") from None
    if not isinstance(value, np.ndarray):
        close = getattr(value, "close", None)
        if close is not None:
            close()
        raise CliError(f"{what} file {path} is an .npz archive; save a single array with np.save")
    return value


def load_templates(path: str, what: str, *, single: bool) -> np.ndarray:
    """Float32 templates from .npy: one (d,) or (1, d) when ``single``, else (n, d). Never cast."""
    array = load_array(path, what)
    if array.dtype != np.float32:
        raise CliError(
            f"{what} file {path} holds {array.dtype} values; fpmatch needs float32 and never casts "
            "(save np.asarray(x, dtype=np.float32))"
        )
    if single:
        if array.ndim == 2 and array.shape[0] == 1:
            array = array[0]
        if array.ndim != 1:
            raise CliError(f"{what} file {path} must hold one template, shape (d,) or (1, d); got {array.shape}")
    elif array.ndim != 2 or array.shape[0] < 1:
        raise CliError(f"{what} file {path} must hold templates of shape (n, d); got {array.shape}")
    return np.ascontiguousarray(array)


def examples_epilog(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def add_command(
    group: Any, name: str, summary: str, handler: Handler, examples: Sequence[str], details: str = ""
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = group.add_parser(
        name,
        help=summary,
        description=summary + (f"\n\n{details}" if details else ""),
        epilog=examples_epilog(*examples),
        formatter_class=FORMATTER,
    )
    parser.set_defaults(handler=handler, parser=parser)
    return parser


def add_group(group: Any, name: str, summary: str, examples: Sequence[str]) -> Any:
    parser: argparse.ArgumentParser = group.add_parser(
        name, help=summary, description=summary, epilog=examples_epilog(*examples), formatter_class=FORMATTER
    )
    return parser.add_subparsers(dest="action", metavar="ACTION", required=True)


__all__ = [
    "CliError",
    "FORMATTER",
    "Handler",
    "add_command",
    "add_group",
    "examples_epilog",
    "load_array",
    "load_templates",
    "note",
    "one_line",
    "positive_int",
]
