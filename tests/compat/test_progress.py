import io

from compat.progress import progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_plain_lines_without_cursor_movements():
    log = io.StringIO()
    for _ in progress(range(50), desc="work", file=log, disable=False, mininterval=0):
        pass
    text = log.getvalue()
    assert "\r" not in text and "\x1b[" not in text
    lines = text.splitlines()
    assert lines and all(line.startswith("work:") for line in lines)
    assert "50/50" in lines[-1]


def test_a_cleared_bar_leaves_nothing_in_a_log():
    log = io.StringIO()
    with progress(total=3, desc="step", file=log, disable=False, leave=False) as bar:
        bar.update(3)
    assert all(line.startswith("step:") for line in log.getvalue().splitlines())


def test_a_terminal_gets_the_live_bar():
    terminal = _Terminal()
    for _ in progress(range(5), desc="work", file=terminal, disable=False, mininterval=0):
        pass
    assert "\r" in terminal.getvalue()
