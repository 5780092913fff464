"""What the MCP tools send back to a model, kept small: capped command output, file
windows, paths, and the text of an execution. No I/O here, so all of it is unit-tested.

A model reads every byte a tool returns, and a sandbox's output is the attacker's: a
``yes`` loop must neither fill the server's memory nor the model's context. Each stream
keeps its first and last bytes (:class:`Capped`) and says how much it cut and how to get
the rest.
"""

from __future__ import annotations

import posixpath
import re

from stockade.errors import InvalidArgumentError
from stockade.execution import Execution

__all__ = [
    "MAX_OUTPUT_BYTES",
    "MAX_READ_BYTES",
    "Capped",
    "clean_path",
    "execution_text",
    "image_mime",
    "strip_ansi",
]

# Per stream of a command (stdout, stderr) and per run_code log: about 4k tokens each.
MAX_OUTPUT_BYTES = 16 * 1024
# The most read_file returns in one call; `limit` defaults to a quarter of it.
MAX_READ_BYTES = 1024 * 1024
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")
_IMAGE_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


class Capped:
    """The first and last bytes of a stream of any length, and how many were cut between.

    A quarter of ``limit`` goes to the head (a command's first lines say what it is
    doing), the rest to the tail (its last lines say how it ended). Memory stays under
    ``limit`` bytes whatever is fed.

    Example::

        out = Capped(limit=100)
        out.feed(b"x" * 1000)
        assert out.cut == 900
    """

    def __init__(self, limit: int = MAX_OUTPUT_BYTES) -> None:
        if limit < 4:
            raise ValueError(f"limit must be at least 4 bytes, got {limit}")
        self.head_limit = limit // 4
        self.tail_limit = limit - self.head_limit
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        room = self.head_limit - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if len(data) >= self.tail_limit:
            self.tail[:] = data[-self.tail_limit :]
        else:
            self.tail += data
            del self.tail[: max(0, len(self.tail) - self.tail_limit)]

    @property
    def cut(self) -> int:
        """How many bytes were dropped from the middle."""
        return self.total - len(self.head) - len(self.tail)

    def text(self, name: str, *, how_to_see_all: str) -> str:
        """The kept bytes as text; where bytes were cut, a note naming ``name`` (``stdout``),
        how much was cut, and ``how_to_see_all``."""
        head = self.head.decode("utf-8", "replace")
        if not self.cut:
            return head + self.tail.decode("utf-8", "replace")
        # The tail may start inside a UTF-8 sequence: drop its continuation bytes.
        tail = bytes(self.tail)
        skip = 0
        while skip < min(3, len(tail)) and 0x80 <= tail[skip] <= 0xBF:
            skip += 1
        note = (
            f"\n[... {self.cut:,} bytes of {name} cut here ({self.total:,} bytes in all, "
            f"first {len(self.head):,} and last {len(self.tail):,} kept). {how_to_see_all}]\n"
        )
        return head + note + tail[skip:].decode("utf-8", "replace")


def clean_path(path: str) -> str:
    """``path`` as an absolute, normalised sandbox path (``/a/./b/../c`` → ``/a/c``).

    Relative paths are refused rather than guessed at: the sandbox's working directory
    depends on its image, and a model should say what it means.
    """
    if not path or "\x00" in path:
        raise InvalidArgumentError(f"bad path {path!r}: give an absolute path like /tmp/data.csv")
    if not path.startswith("/"):
        raise InvalidArgumentError(
            f"bad path {path!r}: paths must be absolute, like /tmp/{path.lstrip('./')}"
        )
    return "/" + posixpath.normpath(path).lstrip("/")


def image_mime(data: bytes) -> str | None:
    """The MIME type of an image a model can look at, read from its magic bytes."""
    for magic, mime in _IMAGE_MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def strip_ansi(text: str) -> str:
    """``text`` without terminal colour codes (IPython colours its tracebacks)."""
    return _ANSI.sub("", text)


def execution_text(ex: Execution, *, images: int, limit: int = MAX_OUTPUT_BYTES) -> str:
    """What a code run printed, returned and raised, as the text part of a tool result.

    An exception in the code is data here (the model fixes its code and runs it again),
    never a failed tool call. ``images`` is how many images travel beside the text.
    """
    hint = "Print less, or write the output to a file and read_file it in parts."
    parts: list[str] = []
    for name, chunks in (("stdout", ex.logs.stdout), ("stderr", ex.logs.stderr)):
        if chunks:
            capped = Capped(limit)
            for chunk in chunks:
                capped.feed(chunk.encode())
            parts.append(f"--- {name} ---\n{capped.text(name, how_to_see_all=hint)}")
    texts = [r.text for r in ex.results if r.text is not None and r.png is None]
    for text in texts:
        capped = Capped(limit)
        capped.feed(text.encode())
        parts.append(f"--- result ---\n{capped.text('the result', how_to_see_all=hint)}")
    if images:
        parts.append(f"--- {images} image(s) attached ---")
    if ex.error is not None:
        capped = Capped(limit)
        capped.feed(strip_ansi(ex.error.traceback).encode())
        parts.append(
            f"--- error: {ex.error.name}: {ex.error.value} ---\n"
            + capped.text("the traceback", how_to_see_all=hint)
        )
    if ex.timed_out:
        parts.append(
            "--- the code ran past its timeout and was interrupted; the context keeps its "
            "variables. Pass a larger timeout (seconds) to let it finish. ---"
        )
    if ex.truncated:
        parts.append("--- the server cut this execution's output: it printed too much ---")
    if not parts:
        parts.append("(no output)")
    return "\n".join(parts)
