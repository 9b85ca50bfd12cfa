"""Progress bars only on a terminal (:mod:`vitrieval.progress`): redirected output gets no bar fragments."""

from __future__ import annotations

import io

from vitrieval.progress import bars_on, tqdm


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bars_are_on_for_a_terminal_only() -> None:
    assert bars_on(_Terminal())
    assert not bars_on(io.StringIO())
    closed = io.StringIO()
    closed.close()  # its isatty() raises ValueError
    assert not bars_on(closed)


def test_a_bar_to_a_file_writes_nothing_and_one_to_a_terminal_draws() -> None:
    to_file, to_terminal = io.StringIO(), _Terminal()
    for stream in (to_file, to_terminal):
        bar = tqdm(total=5, file=stream, desc="work", mininterval=0)
        for _ in range(5):
            bar.update(1)
        bar.close()
    assert to_file.getvalue() == ""
    assert "\r" in to_terminal.getvalue() and "5/5" in to_terminal.getvalue()


def test_disable_still_turns_a_terminal_bar_off() -> None:
    stream = _Terminal()
    bar = tqdm(total=3, file=stream, disable=True)
    bar.update(3)
    bar.close()
    assert stream.getvalue() == ""
