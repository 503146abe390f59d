"""The progress line: what a terminal (or a log viewer honouring ``\\r``) ends up showing.

The reference is a tiny terminal model written here: ``\\r`` returns to the
first column, ``\\n`` ends the line, ``\\x1b[K`` erases to the end of the
line, any other character overwrites the one under the cursor.
"""

from __future__ import annotations

import io
import re
import time

import dask
import dask.array as da
import pytest

from bigstack._progress import ProgressLine, format_seconds, progress_bar

FINAL = re.compile(r"(?:(\w+): )?\[#{30}\] 100%  (\d+)/(\d+) tasks  done in [\d.]+ s")


def screen(text):
    """The lines a terminal shows after receiving ``text``."""
    lines, line, col, i = [], [], 0, 0
    while i < len(text):
        if text.startswith("\x1b[K", i):
            del line[col:]
            i += 3
            continue
        char = text[i]
        if char == "\r":
            col = 0
        elif char == "\n":
            lines.append("".join(line))
            line, col = [], 0
        else:
            if col < len(line):
                line[col] = char
            else:
                line.append(char)
            col += 1
        i += 1
    if line:
        lines.append("".join(line))
    return lines


class Terminal(io.StringIO):
    def isatty(self):
        return True


def _slow(block):
    time.sleep(0.02)
    return block


def _compute(n_chunks=12):
    return da.ones(n_chunks * 4, chunks=4).map_blocks(_slow).sum().compute(scheduler="threads")


def test_screen_model_catches_stray_characters():
    # the reference itself: a shorter line over a longer one leaves the longer one's tail
    assert screen("\r[###] 1.21 s ms\r[###] 2 s\n") == ["[###] 2 s1 s ms"]
    assert screen("\rlong line\x1b[K\rshort\x1b[K\n") == ["short"]


def test_shorter_line_leaves_no_trace():
    for out in (io.StringIO(), Terminal()):
        line = ProgressLine(out, label="x")
        line._draw("x: a long first line, 999.9 ms")
        line._draw("x: short")
        line._draw("x: done", end=True)
        assert [s.rstrip() for s in screen(out.getvalue())] == ["x: done"]
        if isinstance(out, Terminal):  # a terminal gets erase codes, not padding
            assert " " * 5 not in out.getvalue()
        else:
            assert "\x1b" not in out.getvalue()


@pytest.mark.parametrize("stream", [io.StringIO, Terminal])
def test_progress_of_a_dask_computation(stream):
    out = stream()
    with progress_bar(out, label="sum"):
        assert _compute() == 48
    text = out.getvalue()
    assert text.endswith("\n") and text.count("\n") == 1
    shown = screen(text)
    assert len(shown) == 1
    final = text.rstrip("\n").split("\r")[-1].replace("\x1b[K", "")
    # what the screen shows is exactly the last line drawn, complete
    assert shown[0].rstrip() == final.rstrip()
    match = FINAL.fullmatch(final.rstrip())
    assert match and match[1] == "sum" and match[2] == match[3] and int(match[3]) >= 12
    # the bar moved: it was drawn while tasks ran, not only at the end
    segments = [s for s in text.split("\r") if s]
    assert len(segments) >= 3
    if stream is io.StringIO:
        # no segment is shorter than the visible text of the one before it
        for before, after in zip(segments, segments[1:], strict=False):
            assert len(after.rstrip("\n")) >= len(before.rstrip())


def test_each_computation_gets_its_own_line():
    out = io.StringIO()
    with progress_bar(out):
        _compute(3)
        _compute(5)
    shown = [s.rstrip() for s in screen(out.getvalue())]
    assert len(shown) == 2
    assert all(FINAL.fullmatch(s) for s in shown)


def test_a_failed_computation_ends_its_line():
    def boom(block):
        raise RuntimeError("bad tile")

    out = io.StringIO()
    with pytest.raises(RuntimeError, match="bad tile"), progress_bar(out, label="stack"):
        da.ones(8, chunks=4).map_blocks(boom, dtype=float).sum().compute(scheduler="threads")
    shown = screen(out.getvalue())
    assert out.getvalue().endswith("\n") and len(shown) == 1
    assert re.fullmatch(r"stack: \[#*\s*\]\s+\d+%  \d+/\d+ tasks  failed after [\d.]+ s",
                        shown[0].rstrip())


def test_nested_computations_do_not_draw():
    def inner(block):
        return block + da.ones(4, chunks=2).sum().compute(scheduler="sync")

    lazy = da.zeros(8, chunks=4).map_blocks(inner, dtype=float).sum()  # runs inner on meta
    out = io.StringIO()
    with progress_bar(out):
        result = lazy.compute(scheduler="threads")
    assert result == 32
    shown = screen(out.getvalue())
    assert len(shown) == 1 and FINAL.fullmatch(shown[0].rstrip())


def test_default_stream_is_stderr(capsys):
    with progress_bar():
        _compute(2)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert FINAL.fullmatch(screen(captured.err)[0].rstrip())


def test_only_inside_the_block():
    out = io.StringIO()
    with progress_bar(out):
        pass
    dask.compute(da.ones(4, chunks=2).sum())
    assert out.getvalue() == ""


@pytest.mark.parametrize(("seconds", "text"), [(0.04, "0.0 s"), (4.26, "4.3 s"),
                                                (59.94, "59.9 s"), (187.0, "3 min 07 s"),
                                                (7530.0, "2 h 05 min")])
def test_format_seconds(seconds, text):
    assert format_seconds(seconds) == text
