"""Progress bars on stderr for batch enrolment and evaluation runs, drawn by tqdm."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from tqdm import tqdm

#: Makes a progress bar from a label and a total: a context manager counting with ``update(n)``.
ProgressFactory = Callable[[str, int], "tqdm"]


def progress_bars(requested: bool) -> ProgressFactory:
    """Bars drawn when ``requested``, otherwise only when stderr is a terminal."""
    from tqdm import tqdm  # on first use: most commands draw no bar

    disable = False if requested else None  # None: tqdm draws only on a terminal

    def bar(label: str, total: int) -> tqdm:
        return tqdm(total=total, desc=label, disable=disable, dynamic_ncols=True)

    return bar


def silent(label: str, total: int) -> tqdm:
    """A bar that never draws, for callers that asked for no progress."""
    from tqdm import tqdm

    return tqdm(total=total, desc=label, disable=True)


__all__ = ["ProgressFactory", "progress_bars", "silent"]
