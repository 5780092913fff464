"""`stockade image build` as users run it: a subprocess against the test server and runsc.

Every image here starts from the ``debian`` base and uses only run, env, workdir and
copy steps: the package sources are not reachable from these tests.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import LiveServer
from .helpers import unique

pytestmark = [pytest.mark.runsc, pytest.mark.timeout(120)]

STOCKADE = Path(sys.executable).parent / "stockade"
# Variables that would make rich treat a pipe as a terminal (or a terminal as not one).
_TTY_OVERRIDES = ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")


def _env(**extra: str) -> dict[str, str]:
    """The fixture's environment (the server's URL and token), without TTY overrides."""
    env = {k: v for k, v in os.environ.items() if k not in _TTY_OVERRIDES}
    return {**env, **extra}


def cli(
    *args: str, cwd: Path | None = None, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    """Run `stockade ARGS…` with stdout and stderr on pipes (so: plain progress lines)."""
    return subprocess.run(
        [str(STOCKADE), *args], cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True,
        text=True, timeout=timeout, env=_env(), check=False,
    )  # fmt: skip


def cli_on_terminal(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    """Run `stockade ARGS…` with stderr on a pseudo-terminal: (exit code, stdout, stderr)."""
    master, slave = pty.openpty()
    shown = bytearray()
    deadline = time.monotonic() + timeout
    try:
        with subprocess.Popen(
            [str(STOCKADE), *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=slave, env=_env(TERM="xterm-256color", COLUMNS="120"),
        ) as proc:  # fmt: skip
            os.close(slave)
            slave = -1
            try:
                # Read as it comes: a full pty buffer would block the live display.
                while time.monotonic() < deadline:
                    if select.select([master], [], [], 0.2)[0]:
                        try:
                            chunk = os.read(master, 65536)
                        except OSError:  # EIO: the child closed its end
                            break
                        if not chunk:
                            break
                        shown += chunk
                    elif proc.poll() is not None:
                        break
                stdout, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            finally:
                if proc.poll() is None:
                    proc.kill()
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    return proc.returncode, stdout.decode(), shown.decode(errors="replace")


def _steps(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if re.match(r"\[\d+/\d+\] ", line)]


def _images() -> dict[str, str | None]:
    """Every image the server lists: its ID (or digest reference) by name."""
    listed = cli("image", "ls", "--json", timeout=30)
    assert listed.returncode == 0, listed.stderr
    return {str(i["name"]): i.get("pinned") for i in json.loads(listed.stdout)}


def _image_names() -> set[str]:
    return set(_images())


def test_a_python_file_builds_a_named_image_that_sandboxes_run(
    server: LiveServer, tmp_path: Path
) -> None:
    marker = unique("py")
    project = tmp_path / "project"
    project.mkdir()
    (project / "conf.txt").write_text(f"conf {marker}\n")
    (project / "helper.py").write_text("MODE = 'cli-mode'\n")
    (project / "image.py").write_text(
        "from helper import MODE  # a neighbour module: the file's directory is on sys.path\n"
        "from stockade import Image\n"
        "\n"
        "base = Image.from_name('debian')\n"
        "image = (\n"
        f"    base.run_commands('mkdir -p /app && echo {marker} > /app/mark')\n"
        "    .env({'APP_MODE': MODE})\n"
        "    .workdir('/app')\n"
        "    .add_local_file('conf.txt', '/app/conf.txt')  # relative to this file\n"
        ")\n"
        "print('this goes to stderr, not to stdout')\n"
        "if __name__ == '__main__':\n"
        "    raise SystemExit('the main block must not run')\n"
    )
    tag = f"{unique('clibuild')}:v1"
    # Run from elsewhere, with a relative FILE: conf.txt is found next to image.py.
    built = cli("image", "build", "project/image.py", "--tag", tag, cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    assert built.stdout == f"{tag}\n"
    assert "this goes to stderr" in built.stderr
    said = re.search(rf"built {re.escape(tag)} \((img-[0-9a-f]+)", built.stderr)
    assert said, built.stderr
    assert [s.split()[0] for s in _steps(built.stderr)] == ["[1/4]", "[2/4]", "[3/4]", "[4/4]"]
    assert _images()[tag] == said[1]  # the name is the image the build said it made

    ran = cli("run", "--image", tag, "--", "sh", "-c", 'cat mark conf.txt; echo "$APP_MODE $PWD"',
              timeout=30)  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == f"{marker}\nconf {marker}\ncli-mode /app\n"


def test_a_python_file_must_say_which_image_to_build(server: LiveServer, tmp_path: Path) -> None:
    two = tmp_path / "two.py"
    two.write_text(
        "from stockade import Image\n"
        "web = Image.from_name('debian').run_commands('echo web')\n"
        "worker = Image.from_name('debian').run_commands('echo worker')\n"
    )
    r = cli("image", "build", str(two), "--tag", f"{unique('two')}:v1", timeout=30)
    assert r.returncode == 1
    assert r.stdout == ""
    assert "error:" in r.stderr and "web" in r.stderr and "worker" in r.stderr, r.stderr
    assert "`image`" in r.stderr  # the fix: name one of them `image`

    none = tmp_path / "none.py"
    none.write_text("from stockade import Image\nNAME = 'debian'\n")
    r = cli("image", "build", str(none), timeout=30)
    assert r.returncode == 1 and "defines no Image" in r.stderr, r.stderr

    broken = tmp_path / "broken.py"
    broken.write_text("from stockade import Image\nimage = Image.from_name('debian')\n1 / 0\n")
    r = cli("image", "build", str(broken), timeout=30)
    assert r.returncode == 1 and "ZeroDivisionError" in r.stderr, r.stderr
    assert "broken.py" in r.stderr and "line 3" in r.stderr, r.stderr

    r = cli("image", "build", str(two), "--build-arg", "A=1", timeout=30)
    assert r.returncode == 1 and "--build-arg applies to Dockerfiles only" in r.stderr, r.stderr


def test_a_dockerfile_with_build_args_and_a_context(server: LiveServer, tmp_path: Path) -> None:
    marker = unique("df")
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "data.txt").write_text(f"data {marker}\n")
    (tmp_path / "docker").mkdir()
    dockerfile = tmp_path / "docker" / "app.Dockerfile"
    dockerfile.write_text(
        "ARG BASE=debian\n"
        "FROM ${BASE}\n"
        "ARG GREETING=default\n"
        "ENV GREETING=${GREETING}\n"
        "WORKDIR /srv\n"
        "COPY data.txt ./\n"
        f'RUN echo "$GREETING {marker}" > /srv/greeting\n'
    )
    tag = f"{unique('clidocker')}:v2"
    built = cli(
        "image", "build", str(dockerfile), "--tag", tag, "--build-arg", "GREETING=hello",
        "--context", str(tmp_path / "ctx"),
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    assert built.stdout == f"{tag}\n"

    ran = cli("run", "--image", tag, "--", "sh", "-c", 'cat greeting data.txt; echo "$GREETING"',
              timeout=30)  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == f"hello {marker}\ndata {marker}\nhello\n"


def test_a_failing_step_exits_1_with_its_output_and_names_nothing(
    server: LiveServer, tmp_path: Path
) -> None:
    marker = unique("fail")
    file = tmp_path / "image.py"
    file.write_text(
        "from stockade import Image\n"
        "image = Image.from_name('debian').run_commands(\n"
        f"    'echo {marker} > /ok',\n"
        f"    'echo out-{marker}; echo oops >&2; exit 7',\n"
        ")\n"
    )
    name = unique("clifail")
    r = cli("image", "build", str(file), "--tag", f"{name}:v1")
    assert r.returncode == 1
    assert r.stdout == ""
    error = r.stderr[r.stderr.index("error:") :]
    assert "step [1/1]" in error and "exit code 7" in error, r.stderr
    assert f"out-{marker}" in error and "oops" in error, r.stderr
    assert not {n for n in _image_names() if n == name or n.startswith(f"{name}:")}


def test_a_second_build_comes_from_the_cache(server: LiveServer, tmp_path: Path) -> None:
    marker = unique("cache")
    (tmp_path / "payload.txt").write_text(marker)
    file = tmp_path / "image.py"
    file.write_text(
        "from stockade import Image\n"
        "image = (\n"
        "    Image.from_name('debian')\n"
        f"    .run_commands('echo {marker} > /first')\n"
        "    .add_local_file('payload.txt', '/srv/payload.txt')\n"
        "    .run_commands('date +%s%N > /stamp')\n"
        ")\n"
    )
    first = cli("image", "build", str(file))
    assert first.returncode == 0, first.stderr
    image_id = first.stdout.strip()
    assert image_id.startswith("img-"), first.stdout
    assert not any("(cached)" in s for s in _steps(first.stderr)), first.stderr

    started = time.monotonic()
    second = cli("image", "build", str(file))
    took = time.monotonic() - started
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == image_id
    steps = _steps(second.stderr)
    assert len(steps) == 3 and all(s.endswith("(cached)") for s in steps), second.stderr
    reported = re.search(r"built img-\S+ in ([\d.]+)s", second.stderr)
    assert reported and float(reported.group(1)) < 2.0, second.stderr
    assert took < 10, f"a cached `stockade image build` took {took:.1f}s"

    # On a terminal: the live display, left on screen with each step's mark.
    code, stdout, shown = cli_on_terminal("image", "build", str(file))
    assert code == 0, shown
    assert stdout.strip() == image_id
    assert shown.count("(cached)") >= 3 and "✓" in shown and "built img-" in shown, shown
