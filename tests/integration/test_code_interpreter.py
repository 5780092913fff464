"""The code interpreter of docs/code-interpreter.md: stateful Jupyter kernels in a real
gVisor sandbox, through the SDK (sync and async), the CLI and plain HTTP.

Most tests share one `code-interpreter` sandbox (the image is built on first use) and
make contexts of their own, so that one test's state or dead kernel never leaks into
another's.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from stockade import (
    AsyncSandbox,
    CodeContext,
    InvalidArgumentError,
    KernelUnavailableError,
    NotFoundError,
    Result,
    Sandbox,
)

from .conftest import LiveServer
from .helpers import read_until

# The image build happens in a fixture, outside the tests' own time limit.
pytestmark = [pytest.mark.runsc, pytest.mark.timeout(240, func_only=True)]

STOCKADE = Path(sys.executable).parent / "stockade"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MiB = 1024 * 1024


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (the first one, right after the signature)."""
    assert data[:8] == PNG_SIGNATURE, data[:16]
    length, kind = struct.unpack(">I4s", data[8:16])
    assert (length, kind) == (13, b"IHDR"), data[8:16]
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def png_pixels(data: bytes) -> list[bytes]:
    """The rows of an 8-bit RGB or RGBA PNG, unfiltered: proof that it decodes."""
    width, height = png_size(data)
    depth, colour = data[24], data[25]
    assert depth == 8 and colour in (2, 6), (depth, colour)
    bpp = 3 if colour == 2 else 4
    idat, pos = b"", 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"IDAT":
            idat += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * bpp
    assert len(raw) == height * (stride + 1)
    rows: list[bytes] = []
    prior = bytearray(stride)
    for y in range(height):
        kind, line = (
            raw[y * (stride + 1)],
            bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]),
        )
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prior[i]
            c = prior[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(line))
        prior = line
    return rows


def cli(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """`stockade ARGS…` as users run it, finding the test server through the environment."""
    return subprocess.run(
        [str(STOCKADE), *args],
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
        env=os.environ.copy(),
        check=False,
    )


@pytest.fixture(scope="module")
def ci(server: LiveServer) -> Iterator[Sandbox]:
    """One code-interpreter sandbox for the module, roomy enough for a few kernels."""
    with Sandbox.create(image="code-interpreter", memory=2048, timeout=3600) as sb:
        yield sb


@pytest.fixture
def ctx(ci: Sandbox) -> Iterator[CodeContext]:
    """A Python context of the test's own, removed afterwards."""
    made = ci.create_code_context()
    yield made
    with contextlib.suppress(NotFoundError):  # the test may have removed it
        ci.remove_code_context(made)


# -- running code --------------------------------------------------------------------------


def test_default_context_keeps_state(ci: Sandbox) -> None:
    first = ci.run_code("import math\nfrom collections import Counter\nanswer_dflt = 41")
    assert first.error is None, first.error
    assert first.results == [] and first.text is None
    ex = ci.run_code("answer_dflt + 1")
    assert (ex.text, ex.error) == ("42", None)
    assert ex.context_id == first.context_id and ex.context_id is not None
    assert ci.run_code("math.floor(math.pi)").text == "3"
    assert ci.run_code("Counter('aab')['a']").text == "2"
    default = [c for c in ci.list_code_contexts() if c.default and c.language == "python"]
    assert [c.id for c in default] == [ex.context_id]


def test_state_persists_in_a_context(ci: Sandbox, ctx: CodeContext) -> None:
    ci.run_code("import os, json\nos.chdir('/tmp')\nvalue = {'n': 1}", context=ctx)
    ci.run_code("value['n'] += 1\nopen('state.txt', 'w').write('kept')", context=ctx)
    ex = ci.run_code("print(os.getcwd())\njson.dumps(value)", context=ctx)
    assert ex.error is None, ex.error
    assert ex.logs.stdout == ["/tmp\n"]
    assert ex.text == "'{\"n\": 2}'"
    assert ci.files.read_text("/tmp/state.txt") == "kept"


def test_callbacks_fire_while_the_code_runs(ci: Sandbox, ctx: CodeContext) -> None:
    arrivals: list[tuple[float, str]] = []
    code = "import time\nprint('first', flush=True)\ntime.sleep(1.5)\nprint('second')"
    started = time.monotonic()
    ex = ci.run_code(
        code, context=ctx, on_stdout=lambda text: arrivals.append((time.monotonic(), text))
    )
    returned = time.monotonic()
    assert "".join(text for _, text in arrivals) == "first\nsecond\n"
    assert "".join(ex.logs.stdout) == "first\nsecond\n"
    first_at, first_text = arrivals[0]
    assert first_text.startswith("first")
    # The first line came while the cell was still sleeping, not with the rest at the end.
    assert returned - first_at >= 1.0, (first_at - started, returned - started)


def test_callbacks_see_every_kind_in_order(ci: Sandbox, ctx: CodeContext) -> None:
    seen: list[str] = []
    code = (
        "import sys\nfrom IPython.display import display, HTML, Markdown\n"
        "print('out', flush=True)\nprint('err', file=sys.stderr, flush=True)\n"
        "display(HTML('<b>bold</b>'))\ndisplay(Markdown('*md*'))\n"
        "print('between', flush=True)\n'last'"
    )
    ex = ci.run_code(
        code,
        context=ctx,
        on_stdout=lambda t: seen.append(f"stdout:{t.strip()}"),
        on_stderr=lambda t: seen.append(f"stderr:{t.strip()}"),
        on_result=lambda r: seen.append(f"result:{','.join(r.formats())}"),
    )
    assert ex.error is None, ex.error
    assert seen == [
        "stdout:out", "stderr:err", "result:text,html", "result:text,markdown",
        "stdout:between", "result:text",
    ]  # fmt: skip
    html, markdown, main = ex.results
    assert html.html == "<b>bold</b>" and not html.is_main_result
    assert markdown.markdown == "*md*" and not markdown.is_main_result
    assert main.is_main_result and ex.text == "'last'"


def test_display_of_plain_values(ci: Sandbox, ctx: CodeContext) -> None:
    ex = ci.run_code("display('shown', {'k': 1})\nNone", context=ctx)
    assert [r.text for r in ex.results] == ["'shown'", "{'k': 1}"]
    assert not any(r.is_main_result for r in ex.results)
    assert ex.text is None  # `None` as the last expression displays nothing


def test_matplotlib_show_gives_a_png(ci: Sandbox, ctx: CodeContext) -> None:
    code = (
        "%config InlineBackend.print_figure_kwargs = {'bbox_inches': None}\n"
        "import matplotlib.pyplot as plt\n"
        "fig = plt.figure(figsize=(4, 3), dpi=100)\n"
        "plt.plot([1, 3, 2])\nplt.show()"
    )
    ex = ci.run_code(code, context=ctx)
    assert ex.error is None, ex.error
    images = [r for r in ex.results if r.png is not None]
    assert len(images) == 1, ex.results
    figure = images[0]
    assert not figure.is_main_result
    assert figure.text is not None and figure.text.startswith("<Figure size 400x300")
    assert "png" in figure.formats()
    assert figure.png is not None
    data = base64.b64decode(figure.png)
    assert png_size(data) == (400, 300)
    # It decodes to the figure: a white background with matplotlib's blue line on it.
    rows = png_pixels(data)
    bpp = len(rows[0]) // 400
    pixels = [row[x : x + 3] for row in rows for x in range(0, len(row), bpp)]
    assert pixels.count(b"\xff\xff\xff") > len(pixels) // 2
    assert any(
        abs(p[0] - 0x1F) < 8 and abs(p[1] - 0x77) < 8 and abs(p[2] - 0xB4) < 8 for p in pixels
    )


def test_pandas_dataframe_gives_html_and_text(ci: Sandbox, ctx: CodeContext) -> None:
    code = "import pandas as pd\ndf = pd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})\ndf"
    ex = ci.run_code(code, context=ctx)
    assert ex.error is None, ex.error
    (result,) = ex.results
    assert result.is_main_result
    assert result.html is not None and "<table" in result.html and "<td>x</td>" in result.html
    assert result.text is not None
    assert result.text.split() == ["a", "b", "0", "1", "x", "1", "2", "y"]
    assert {"text", "html"} <= set(result.formats())
    assert result._repr_mimebundle_()["text/html"] == result.html


def test_error_is_data(ci: Sandbox, ctx: CodeContext) -> None:
    errors: list[str] = []
    ex = ci.run_code(
        "print('before')\nx = 1/0", context=ctx, on_error=lambda e: errors.append(e.name)
    )
    assert ex.logs.stdout == ["before\n"]
    assert ex.error is not None
    assert (ex.error.name, ex.error.value) == ("ZeroDivisionError", "division by zero")
    assert "ZeroDivisionError" in ex.error.traceback and "1/0" in ex.error.traceback
    assert errors == ["ZeroDivisionError"]
    assert ex.results == [] and not ex.timed_out
    # The context goes on.
    assert ci.run_code("'fine'", context=ctx).text == "'fine'"
    syntax = ci.run_code("def (:", context=ctx)
    assert syntax.error is not None and syntax.error.name == "SyntaxError"


def test_execution_count_increments(ci: Sandbox, ctx: CodeContext) -> None:
    counts = [ci.run_code("1", context=ctx).execution_count for _ in range(3)]
    assert counts[0] is not None
    assert counts == [counts[0], counts[0] + 1, counts[0] + 2]


# -- contexts ------------------------------------------------------------------------------


def test_contexts_are_isolated(ci: Sandbox, ctx: CodeContext) -> None:
    other = ci.create_code_context()
    try:
        ci.run_code("owner = 'first'", context=ctx)
        ci.run_code("owner = 'second'", context=other)
        assert ci.run_code("owner", context=ctx).text == "'first'"
        assert ci.run_code("owner", context=other).text == "'second'"
        missing = ci.run_code("owner")  # the default context has none
        assert missing.error is not None and missing.error.name == "NameError"
    finally:
        ci.remove_code_context(other)


def test_create_list_restart_remove(ci: Sandbox) -> None:
    made = ci.create_code_context("python")
    assert (made.language, made.default, made.workdir, made.status) == (
        "python", False, None, "idle",
    )  # fmt: skip
    assert made.id.startswith("ctx-")
    listed = {c.id: c for c in ci.list_code_contexts()}
    assert listed[made.id] == made

    ci.run_code("kept = 1", context=made.id)
    restarted = ci.restart_code_context(made)
    assert (restarted.id, restarted.language, restarted.status) == (made.id, "python", "idle")
    gone = ci.run_code("kept", context=made)
    assert gone.error is not None and gone.error.name == "NameError"

    ci.remove_code_context(made.id)
    assert made.id not in {c.id for c in ci.list_code_contexts()}
    with pytest.raises(NotFoundError):
        ci.run_code("1", context=made)
    with pytest.raises(NotFoundError):
        ci.remove_code_context(made)
    with pytest.raises(NotFoundError):
        ci.restart_code_context(made)


def test_bash_context_with_workdir(ci: Sandbox) -> None:
    bash = ci.create_code_context("bash", workdir="/tmp")
    try:
        assert (bash.language, bash.workdir) == ("bash", "/tmp")
        ex = ci.run_code("pwd", context=bash)
        assert (ex.error, "".join(ex.logs.stdout)) == (None, "/tmp\n")
        ci.run_code("GREETING=hello; cd /etc", context=bash)
        ex = ci.run_code('echo "$GREETING from $PWD"', context=bash)
        assert "".join(ex.logs.stdout) == "hello from /etc\n"
        # The bash default context, started by language alone.
        ex = ci.run_code("echo $((6 * 7))", language="bash")
        assert "".join(ex.logs.stdout) == "42\n"
        assert ex.context_id != bash.id
        with pytest.raises(InvalidArgumentError, match="bash"):
            ci.run_code("1", context=bash, language="python")
    finally:
        ci.remove_code_context(bash)


def test_timeout_interrupts_and_keeps_state(ci: Sandbox, ctx: CodeContext) -> None:
    ci.run_code("survivor = 'still here'", context=ctx)
    started = time.monotonic()
    ex = ci.run_code(
        "import time\nprint('sleeping', flush=True)\ntime.sleep(60)", context=ctx, timeout=1.5
    )
    assert time.monotonic() - started < 20
    assert ex.timed_out
    assert ex.error is not None and ex.error.name == "KeyboardInterrupt", ex.error
    assert ex.logs.stdout == ["sleeping\n"]
    assert ci.run_code("survivor", context=ctx).text == "'still here'"


def test_a_dying_kernel_is_an_error_then_restart_works(ci: Sandbox, ctx: CodeContext) -> None:
    ci.run_code("lost = 1", context=ctx)
    ex = ci.run_code("import os\nos._exit(1)", context=ctx)
    assert ex.error is not None and ex.error.name == "KernelDied", ex.error
    assert {c.id: c.status for c in ci.list_code_contexts()}[ctx.id] == "dead"
    again = ci.run_code("1", context=ctx)
    assert again.error is not None and again.error.name == "KernelDied"
    assert ci.restart_code_context(ctx).status == "idle"
    ex = ci.run_code("'lost' in dir()", context=ctx)
    assert (ex.text, ex.error) == ("False", None)


def test_output_past_the_cap_is_truncated(ci: Sandbox, ctx: CodeContext) -> None:
    # 20 MiB in 40 writes against the default cap of 16 MiB.
    code = "for i in range(40):\n    print('x' * (512 * 1024), flush=True)"
    ex = ci.run_code(code, context=ctx, timeout=120)
    assert ex.truncated and not ex.timed_out, (ex.error, ex.logs.stderr[-1:])
    printed = sum(len(chunk) for chunk in ex.logs.stdout)
    assert 8 * MiB < printed <= 16 * MiB
    assert "truncated" in ex.logs.stderr[-1]
    # The context is still usable afterwards.
    assert ci.run_code("6 * 7", context=ctx).text == "42"


def test_one_huge_print_is_truncated(ci: Sandbox, ctx: CodeContext) -> None:
    # A single 20 MiB write reaches the server as one kernel message.
    ex = ci.run_code("print('y' * (20 * 1024 * 1024))", context=ctx, timeout=120)
    assert ex.truncated and not ex.timed_out, (ex.error, ex.logs.stderr[-1:])
    assert sum(len(chunk) for chunk in ex.logs.stdout) <= 16 * MiB
    assert ci.run_code("6 * 7", context=ctx).text == "42"


def test_request_errors(ci: Sandbox, server: LiveServer) -> None:
    with pytest.raises(NotFoundError, match="ctx-nope"):
        ci.run_code("1", context="ctx-nope")
    with pytest.raises(InvalidArgumentError, match="python"):
        ci.run_code("1", language="cobol")
    with pytest.raises(InvalidArgumentError, match="python"):
        ci.create_code_context("cobol")
    with Sandbox.create(image="python", timeout=300) as plain:
        with pytest.raises(KernelUnavailableError, match="code-interpreter") as info:
            plain.run_code("1")
        assert (info.value.status, info.value.code) == (409, "kernel_unavailable")
        with pytest.raises(KernelUnavailableError):
            plain.create_code_context("bash")


def test_http_stream_is_ndjson(ci: Sandbox, http: httpx.Client) -> None:
    body = {"code": "print('a')\n1 + 1", "language": "python", "context": None, "timeout": None}
    with http.stream("POST", f"/v1/sandboxes/{ci.id}/code/run", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        events = [json.loads(line) for line in response.iter_lines() if line]
    assert [e["type"] for e in events] == ["stdout", "result", "end"]
    assert events[1] == {"type": "result", "data": {"text/plain": "2"}, "is_main_result": True}
    assert set(events[2]) >= {"execution_count", "context", "truncated", "timed_out"}


def test_context_workdir_over_http(ci: Sandbox, http: httpx.Client) -> None:
    """The API says workdir; the body of an SDK from before the rename ("cwd") still works."""
    path = f"/v1/sandboxes/{ci.id}/code/contexts"
    made = []
    try:
        for body in ({"language": "bash", "workdir": "/srv"}, {"language": "bash", "cwd": "/srv"},
                     {"language": "bash", "cwd": None}):  # fmt: skip
            r = http.post(path, json=body)
            assert r.status_code == 201, r.text
            made.append(r.json()["id"])
            assert set(r.json()) == {"id", "language", "workdir", "default", "status"}
            assert r.json()["workdir"] == body.get("workdir", body.get("cwd"))
        r = http.post(path, json={"language": "bash", "workdir": "srv"})
        assert r.status_code == 422 and "absolute" in r.json()["error"]["message"]
        r = http.post(path, json={"language": "bash", "workdir": "/srv", "cwd": "/tmp"})
        assert r.status_code == 422 and "cwd: unknown field" in r.json()["error"]["message"]
        listed = {c["id"]: c for c in http.get(path).json()["contexts"]}
        assert [listed[i]["workdir"] for i in made] == ["/srv", "/srv", None]
    finally:
        for ctx_id in made:
            http.delete(f"{path}/{ctx_id}")


def test_block_network_still_runs_code(server: LiveServer) -> None:
    with Sandbox.create(image="code-interpreter", block_network=True, timeout=300) as sb:
        ex = sb.run_code("import socket\nprint(socket.gethostname() != '')\n6 * 7")
        assert (ex.text, ex.error, ex.logs.stdout) == ("42", None, ["True\n"])
        assert sb.last_info.network is not None and sb.last_info.network.block_network


async def test_async_sdk(ci: Sandbox) -> None:
    asb = await AsyncSandbox.from_id(ci.id)
    made = await asb.create_code_context()
    try:
        arrivals: list[tuple[float, str]] = []
        results: list[Result] = []
        ex = await asb.run_code(
            "import time\nprint('a', flush=True)\ntime.sleep(1.2)\nprint('b')\n6 * 7",
            context=made,
            on_stdout=lambda t: arrivals.append((time.monotonic(), t)),
            on_result=results.append,
        )
        returned = time.monotonic()
        assert ex.text == "42" and results == ex.results
        assert returned - arrivals[0][0] >= 1.0
        assert made.id in {c.id for c in await asb.list_code_contexts()}
        await asb.restart_code_context(made)
        assert (await asb.run_code("'x' in dir()", context=made)).text == "False"
    finally:
        await asb.remove_code_context(made)
        await asb.client.aclose()


# -- the CLI -------------------------------------------------------------------------------


def test_cli_runs_a_snippet(ci: Sandbox, tmp_path: Path) -> None:
    r = cli("code", ci.id, "-c", "print('hello')\n6 * 7")
    assert (r.returncode, r.stdout) == (0, "hello\n42\n"), r.stderr

    failed = cli("code", ci.id, "-c", "1/0")
    assert failed.returncode == 1
    assert failed.stdout == ""
    assert "ZeroDivisionError: division by zero" in failed.stderr

    plot = (
        "%config InlineBackend.print_figure_kwargs = {'bbox_inches': None}\n"
        "import matplotlib.pyplot as plt\nplt.figure(figsize=(5, 2), dpi=100)\n"
        "plt.plot([1, 2])\nplt.show()"
    )
    shown = cli("code", ci.id, "-c", plot, "--save-dir", str(tmp_path))
    assert shown.returncode == 0, shown.stderr
    saved = tmp_path / "result-1.png"
    assert shown.stdout.startswith("[image/png 500x200, "), shown.stdout
    assert shown.stdout.rstrip().endswith(f"-> {saved}")
    assert png_size(saved.read_bytes()) == (500, 200)

    as_json = cli("code", ci.id, "-c", "print('j')\n'v'", "--json")
    data = json.loads(as_json.stdout)
    assert data["logs"]["stdout"] == ["j\n"]
    assert data["results"] == [{"data": {"text/plain": "'v'"}, "is_main_result": True}]
    assert data["error"] is None and data["execution_count"] >= 1

    piped = cli("code", ci.id, "--language", "bash", input="cd /tmp\npwd\n")
    assert (piped.returncode, piped.stdout) == (0, "/tmp\n"), piped.stderr


def test_cli_contexts(ci: Sandbox) -> None:
    made = cli("code-context", "create", ci.id, "--language", "bash", "--workdir", "/etc")
    assert made.returncode == 0, made.stderr
    ctx_id = made.stdout.strip()
    assert ctx_id.startswith("ctx-")
    ran = cli("code", ci.id, "--context", ctx_id, "-c", "pwd")
    assert (ran.returncode, ran.stdout) == (0, "/etc\n"), ran.stderr
    listed = cli("code-context", "ls", ci.id, "--json")
    mine = [c for c in json.loads(listed.stdout) if c["id"] == ctx_id]
    assert mine == [{"id": ctx_id, "language": "bash", "workdir": "/etc", "default": False,
                     "status": "idle"}]  # fmt: skip
    assert cli("code-context", "restart", ci.id, ctx_id).stdout == f"{ctx_id}\n"
    removed = cli("code-context", "rm", ci.id, ctx_id)
    assert (removed.returncode, removed.stdout) == (0, f"{ctx_id}\n"), removed.stderr
    again = cli("code-context", "rm", ci.id, ctx_id)
    assert again.returncode == 1 and ctx_id in again.stderr
    unavailable = cli("code", ci.id, "--context", ctx_id, "-c", "1")
    assert unavailable.returncode == 1 and "error:" in unavailable.stderr


def test_cli_prompt_through_a_pty(ci: Sandbox) -> None:
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [str(STOCKADE), "code", ci.id],
        stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
        env={**os.environ, "TERM": "dumb"},  # no bracketed-paste sequences around prompts
        # Ctrl-C as at a terminal, even where the test itself runs with SIGINT ignored (a
        # background job of a shell script), which the prompt would inherit.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    os.close(slave)
    seen = bytearray()

    def step(typed: bytes, expect: bytes, limit: float = 30) -> None:
        seen.clear()
        if typed:
            os.write(master, typed)
        assert read_until(master, re.compile(expect, re.DOTALL), seen, limit), bytes(seen)

    try:
        step(b"", rb"Ctrl-D exits.*>>> $", 60)
        step(b"x = 6\n", rb">>> $")
        step(b"for i in range(2):\n", rb"\.\.\. $")
        step(b"    print(i * x)\n", rb"\.\.\. $")
        step(b"\n", rb"0\r?\n6\r?\n>>> $")
        step(b"x * 7\n", rb"42\r?\n>>> $")
        step(b"1/0\n", rb"ZeroDivisionError: division by zero\r?\n>>> $")
        # Ctrl-C during a run abandons it; the server then interrupts the cell, so the
        # context is soon free for the next one.
        step(b"import time; time.sleep(60)\n", rb"sleep\(60\)\r?\n")
        time.sleep(1.5)
        proc.send_signal(signal.SIGINT)
        step(b"", rb"abandoned\r?\n>>> $")
        started = time.monotonic()
        step(b"x\n", rb"6\r?\n>>> $")
        assert time.monotonic() - started < 20
        os.write(master, b"\x04")  # Ctrl-D
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
