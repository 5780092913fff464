"""The code-interpreter figures of ``make bench``: ``Sandbox.run_code`` against what one
would do without a kernel, a fresh ``python3`` per snippet under raw runsc.

- the round trip of ``run_code("1+1")`` in a warm context, against ``runsc exec python3 -c``;
- create → first ``run_code`` (and that first ``run_code`` alone, which starts the kernel),
  against ``runsc run`` + the first output of ``runsc exec python3 -c``;
- a 1000×1000 matplotlib PNG returned by ``plt.show()``, against a ``python3`` that saves
  the same figure to a file, then ``cat`` of that file.

The raw sandboxes run on the code-interpreter image itself: its layers, stacked read-only
with overlayfs as a sandbox's root stacks them, so both sides have the same Python, numpy
and matplotlib (and the font cache that the image's build made).
"""

from __future__ import annotations

import base64
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

from stockade import Sandbox
from stockade.server.images.catalog import ImageCatalog
from stockade.server.network.policy import NetworkPolicy
from stockade.server.service.builder import ImageBuilder
from stockade.server.service.execs import ExecService
from stockade.server.service.recipes import CODE_INTERPRETER, code_interpreter_spec
from stockade.server.service.sandboxes import SandboxService

from .baseline import RawRunsc

Row = tuple[str, list[float], list[float], str]

_PLOT = """\
fig = plt.figure(figsize=(10, 10), dpi=100)
x = np.linspace(0, 20 * np.pi, 1000)
plt.plot(x, np.sin(x) * np.exp(-x / 40), lw=0.8)
plt.plot(x, np.cos(3 * x) * 0.3, lw=0.5, alpha=0.7)
plt.grid(True)
plt.title("bench")
"""
# The inline backend crops figures to their drawn area by default (bbox_inches="tight");
# without that, the PNG is the figure's own 1000×1000 pixels, as savefig makes it.
_KERNEL_SETUP = (
    "%config InlineBackend.print_figure_kwargs = {'bbox_inches': None}\n"
    "import numpy as np\nimport matplotlib.pyplot as plt"
)
_RAW_PLOT = (
    "import matplotlib\nmatplotlib.use('Agg')\nimport numpy as np\n"
    "import matplotlib.pyplot as plt\n" + _PLOT + "fig.savefig('/tmp/plot.png')\n"
)


def _counts(runs: int) -> tuple[int, int, int]:
    """Repetitions of the warm round trip, the PNG and the create (a sandbox each)."""
    return max(30, runs), max(5, runs // 2), max(3, runs // 4)


def code_legend(runs: int) -> str:
    warm, png, first = _counts(runs)
    return (
        "\nraw python3 = raw runsc on the code-interpreter image's own layers, with a fresh\n"
        'interpreter per snippet: `runsc exec python3 -c "print(1+1)"`; create is `runsc run\n'
        "--detach` + that exec to its first byte; the PNG is `python3 -c` saving the same figure\n"
        "(Agg) to a file, then `cat`. run_code's kernel keeps numpy and pyplot imported from an\n"
        "earlier cell; python3 imports them each time. Code runs: "
        f"{warm} warm round trips, {png} PNGs,\n{first} creates (a new sandbox each), "
        "after warm-ups."
    )


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR", png[:16]
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def _layers(cache: Path) -> list[Path]:
    """The code-interpreter image's layers, top-first, as the server made them."""
    # cached() reads the layer store only: the services it is given are never used.
    builder = ImageBuilder(
        cache, ImageCatalog(cache), cast(SandboxService, None), cast(ExecService, None),
        policy=NetworkPolicy.parse(),
    )  # fmt: skip
    made = builder.cached(code_interpreter_spec())
    if made is None:
        raise RuntimeError(f"the {CODE_INTERPRETER} image is not in the cache {cache}")
    return list(made.lowerdirs)


def code_rows(
    work: Path,
    runsc: str,
    cache: Path,
    runs: int,
    timed: Callable[[Callable[[], object], int], list[float]],
) -> list[Row]:
    rows: list[Row] = []
    # The first create builds the image when this cache has none yet (tens of seconds),
    # and starts one kernel: neither belongs in a figure.
    with Sandbox.create(image=CODE_INTERPRETER, timeout=1800) as sb:
        assert sb.run_code("1+1").text == "2"

    merged = work / "code-rootfs"
    merged.mkdir()
    lower = ":".join(str(p) for p in _layers(cache))
    subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", f"ro,lowerdir={lower}", str(merged)],
        check=True,
    )
    raw = RawRunsc(runsc, merged, work / "raw-code")
    warm, png, first = _counts(runs)
    try:
        rows += _warm_rows(raw, warm, png, timed)
        rows += _first_rows(raw, first)
    finally:
        subprocess.run(["umount", "-l", str(merged)], check=False)
    return rows


def _warm_rows(
    raw: RawRunsc,
    n: int,
    n_png: int,
    timed: Callable[[Callable[[], object], int], list[float]],
) -> list[Row]:
    sb = Sandbox.create(image=CODE_INTERPRETER, timeout=1800)
    sid = raw.start()
    try:
        # The first run_code starts the kernel; the timing's own warm-ups follow it.
        ex = sb.run_code(_KERNEL_SETUP)
        assert ex.error is None, ex.error

        def one_plus_one() -> None:
            assert sb.run_code("1+1").text == "2"

        def raw_one_plus_one() -> None:
            assert raw.exec(sid, "python3", "-c", "print(1+1)") == b"2\n"

        rows: list[Row] = [
            ("run_code('1+1'), warm context", timed(one_plus_one, n),
             timed(raw_one_plus_one, n), "raw python3"),
        ]  # fmt: skip

        def plot() -> None:
            ex = sb.run_code(_PLOT + "plt.show()")
            pngs = [base64.b64decode(r.png) for r in ex.results if r.png]
            assert ex.error is None and len(pngs) == 1, ex
            assert _png_size(pngs[0]) == (1000, 1000), _png_size(pngs[0])

        def raw_plot() -> None:
            out = raw.exec(sid, "sh", "-c", 'python3 -c "$1" && cat /tmp/plot.png', "sh", _RAW_PLOT)
            assert _png_size(out) == (1000, 1000), _png_size(out)

        rows.append(("1000×1000 matplotlib PNG", timed(plot, n_png), timed(raw_plot, n_png),
                     "raw python3"))  # fmt: skip
        return rows
    finally:
        sb.terminate()
        raw.delete(sid)


def _first_rows(raw: RawRunsc, n: int) -> list[Row]:
    total: list[float] = []
    first: list[float] = []
    raw_total: list[float] = []
    raw_first: list[float] = []
    # One untimed round of each first, as the other figures' warm-ups.
    for i in range(n + 1):
        t0 = time.perf_counter()
        sb = Sandbox.create(image=CODE_INTERPRETER, timeout=600)
        try:
            t1 = time.perf_counter()
            assert sb.run_code("1+1").text == "2"
            t2 = time.perf_counter()
        finally:
            sb.terminate()
        t3 = time.perf_counter()
        sid = raw.start()
        try:
            started = time.perf_counter() - t3
            took = raw.first_output(sid, "python3", "-c", "print(1+1)")
        finally:
            raw.delete(sid)
        if i:
            total.append(t2 - t0)
            first.append(t2 - t1)
            raw_total.append(started + took)
            raw_first.append(took)
    return [
        ("create → first run_code('1+1')", total, raw_total, "raw python3"),
        ("first run_code('1+1') after create", first, raw_first, "raw python3"),
    ]
