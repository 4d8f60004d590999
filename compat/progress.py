"""Progress bars that suit where they are written: tqdm's live bar on a terminal; in a log file, a pipe or
CI, a plain line every half minute (and at the end) instead of carriage returns and cursor movements."""

import re
import sys

from tqdm.auto import tqdm

LOG_INTERVAL_SECONDS = 30
_CURSOR_CONTROL = re.compile(r"\x1b\[[0-9;]*[A-Za-z]|\r")


class _Lines:
    """A stream for tqdm that turns each redraw into one plain line; blank redraws (a cleared bar) vanish."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        text = _CURSOR_CONTROL.sub("", text).strip()
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress(iterable=None, **options) -> tqdm:
    """`tqdm(iterable, **options)` on stderr or `options["file"]`, as plain lines where that is no terminal.
    TQDM_* environment variables (e.g. TQDM_DISABLE=1) apply as with tqdm itself."""
    stream = options.pop("file", None) or sys.stderr
    if not getattr(stream, "isatty", lambda: False)():
        stream = _Lines(stream)
        options["mininterval"] = max(options.get("mininterval", 0), LOG_INTERVAL_SECONDS)
        options.setdefault("ncols", 100)  # no terminal to measure
    return tqdm(iterable, file=stream, **options)
