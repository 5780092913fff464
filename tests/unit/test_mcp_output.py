"""The pure parts of the MCP tools: capped output, paths, images, execution text, and the
windowed file read."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stockade.errors import InvalidArgumentError
from stockade.execution import Execution, ExecutionError, Logs, Result
from stockade.mcp.output import Capped, clean_path, execution_text, image_mime, strip_ansi
from stockade.mcp.tools import _Window, _WindowFull


def test_short_output_is_kept_whole() -> None:
    out = Capped(limit=100)
    out.feed(b"hello ")
    out.feed(b"world\n")
    assert out.cut == 0
    assert out.text("stdout", how_to_see_all="x") == "hello world\n"


def test_long_output_keeps_head_and_tail_and_says_what_was_cut() -> None:
    out = Capped(limit=100)
    for i in range(1000):
        out.feed(f"{i:04d}\n".encode())
    text = out.text("stdout", how_to_see_all="Redirect it to a file.")
    assert text.startswith("0000\n0001\n")
    assert text.endswith("0998\n0999\n")
    assert out.total == 5000 and out.cut == 4900
    assert "4,900 bytes of stdout cut here (5,000 bytes in all" in text
    assert "Redirect it to a file." in text


@given(st.lists(st.binary(max_size=300), max_size=40), st.integers(4, 256))
def test_capped_memory_is_bounded_and_kept_bytes_are_the_streams_ends(
    chunks: list[bytes], limit: int
) -> None:
    out = Capped(limit=limit)
    for chunk in chunks:
        out.feed(chunk)
    whole = b"".join(chunks)
    assert len(out.head) + len(out.tail) <= limit
    assert out.total == len(whole)
    assert whole.startswith(bytes(out.head))
    assert whole.endswith(bytes(out.tail))
    assert out.cut == len(whole) - len(out.head) - len(out.tail) >= 0


def test_a_tail_starting_inside_a_character_drops_the_broken_bytes() -> None:
    out = Capped(limit=8)
    out.feed(b"ab" + "é".encode() * 20)
    text = out.text("stdout", how_to_see_all="")
    assert "\ufffd" not in text.split("]")[-1]


@pytest.mark.parametrize(
    ("given", "clean"),
    [("/tmp/a.txt", "/tmp/a.txt"), ("/tmp/./x/../a", "/tmp/a"), ("//etc", "/etc"), ("/", "/")],
)
def test_paths_are_normalised(given: str, clean: str) -> None:
    assert clean_path(given) == clean


@pytest.mark.parametrize("bad", ["", "tmp/a", "./a", "/tmp/\x00a"])
def test_relative_or_empty_paths_are_refused_with_the_fix(bad: str) -> None:
    with pytest.raises(InvalidArgumentError, match="absolute"):
        clean_path(bad)


def test_image_types_are_read_from_magic_bytes() -> None:
    assert image_mime(b"\x89PNG\r\n\x1a\n...") == "image/png"
    assert image_mime(b"\xff\xd8\xff\xe0") == "image/jpeg"
    assert image_mime(b"GIF89a") == "image/gif"
    assert image_mime(b"RIFF\0\0\0\0WEBPVP8 ") == "image/webp"
    assert image_mime(b"hello") is None


def test_an_exception_is_text_without_colour_codes() -> None:
    ex = Execution(
        logs=Logs(stdout=["before\n"]),
        error=ExecutionError(
            name="ZeroDivisionError",
            value="division by zero",
            traceback="\x1b[0;31mZeroDivisionError\x1b[0m: division by zero",
        ),
    )
    text = execution_text(ex, images=0)
    assert "--- stdout ---\nbefore" in text
    assert "--- error: ZeroDivisionError: division by zero ---" in text
    assert "\x1b" not in text
    assert strip_ansi("\x1b[1;32mok\x1b[0m") == "ok"


def test_a_figures_text_is_left_out_beside_its_image() -> None:
    figure = Result(data={"text/plain": "<Figure size 400x300>", "image/png": "iVBOR"})
    value = Result(data={"text/plain": "42"}, is_main_result=True)
    text = execution_text(Execution(results=[figure, value]), images=1)
    assert "<Figure" not in text
    assert "--- result ---\n42" in text and "1 image(s) attached" in text
    assert execution_text(Execution(), images=0) == "(no output)"


@pytest.mark.parametrize(("offset", "limit"), [(0, 5), (3, 4), (0, 100), (98, 10), (200, 3)])
def test_a_window_keeps_its_slice_and_stops_the_stream_after_it(offset: int, limit: int) -> None:
    data = bytes(range(100))
    window = _Window(offset, limit)
    fed = 0
    try:
        for i in range(0, len(data), 7):
            window.write(data[i : i + 7])
            fed = i + 7
    except _WindowFull:
        assert fed < len(data) or offset + limit <= len(data)
    assert bytes(window.data) == data[offset : offset + limit]
