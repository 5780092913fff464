"""Images built from code: steps run in gVisor sandboxes, each a cached layer.

These builds need no network; test_image_packages.py covers apt and pip against package
sources on this machine.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest

from stockade import BuildError, Client, Image, InvalidArgumentError, NotFoundError, Sandbox

from .conftest import LiveServer, private_cache
from .helpers import unique, wait_ended

pytestmark = pytest.mark.runsc


def _layers(server: LiveServer) -> set[str]:
    cache = server.data_dir.parent / "cache" / "layers"
    return {p.name for p in cache.glob("build-*")}


def test_steps_build_an_image_sandboxes_start_from(server: LiveServer, tmp_path: Path) -> None:
    marker = unique("m")
    (tmp_path / "conf.toml").write_text(f"marker = '{marker}'\n")
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "mod.py").write_text("VALUE = 42\n")
    (src / "run.sh").write_text("#!/bin/sh\necho run\n")
    (src / "run.sh").chmod(0o755)
    img = (
        Image.from_name("debian")
        .run_commands(f"mkdir -p /app && echo {marker} > /app/ready", "echo second >> /app/ready")
        .env({"APP_MODE": "test"})
        .workdir("/app")
        .add_local_file(tmp_path / "conf.toml", "/app/conf.toml")
        .add_local_dir(src, "/app/src")
    )
    log: list[str] = []
    with Sandbox.create(image=img, timeout=120, on_image_log=log.append) as sb:
        r = sb.run('cat ready conf.toml; echo "$APP_MODE $(pwd)"; ls -l src/run.sh; src/run.sh')
        assert r.exit_code == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[:3] == [marker, "second", f"marker = '{marker}'"]
        assert lines[3] == "test /app"
        assert lines[4].startswith("-rwxr-xr-x") and " root root " in lines[4]
        assert lines[5] == "run"
        assert sb.files.read_text("/app/src/pkg/mod.py") == "VALUE = 42\n"
    assert any("[1/5] run" in line for line in log), log
    assert any("ready in" in line for line in log), log


def test_unchanged_images_are_cached_and_changes_rebuild_from_there(
    server: LiveServer, tmp_path: Path
) -> None:
    marker = unique("c")
    base = Image.from_name("debian").run_commands(f"echo {marker} > /one")
    first = base.run_commands("date +%s%N > /two")
    with Client() as client:
        built = client.build(first)
        log: list[str] = []
        started = time.monotonic()
        again = client.build(first, on_log=log.append)
        took = time.monotonic() - started
        assert again.pinned == built.pinned
        assert all("(cached)" in line for line in log if line.startswith("[")), log
        assert took < 2.0, f"a cached build took {took:.2f}s"
        # Changing the last step rebuilds it alone.
        log.clear()
        changed = client.build(base.run_commands("echo changed > /two"), on_log=log.append)
        steps = [line for line in log if line.startswith("[")]
        assert "(cached)" in steps[0] and "(cached)" not in steps[1], steps
        assert changed.pinned != built.pinned
    with Sandbox.create(image=changed.pinned or "", timeout=60) as sb:
        assert sb.run("cat /one /two").stdout == f"{marker}\nchanged\n"


def test_a_failing_step_fails_the_build_and_leaves_no_layer(server: LiveServer) -> None:
    before = _layers(server)
    img = Image.from_name("debian").run_commands(f"echo {unique('f')}; echo oops >&2; exit 3")
    with pytest.raises(BuildError) as failed, Client() as client:
        client.build(img)
    assert "exit code 3" in failed.value.message and "oops" in failed.value.message
    assert _layers(server) == before
    # No build sandbox is left running either.
    assert not [s for s in Sandbox.list(status="running") if "stockade.build" in s.last_info.tags]


def test_concurrent_builds_of_one_image_do_the_work_once(server: LiveServer) -> None:
    img = Image.from_name("debian").run_commands(
        f"echo {unique('x')}; date +%s%N > /stamp; sleep 1"
    )
    results: list[str] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            with Client() as client:
                results.append(client.build(img).pinned or "")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len(set(results)) == 1
    with (
        Sandbox.create(image=results[0], timeout=60) as a,
        Sandbox.create(image=results[0], timeout=60) as b,
    ):
        assert a.run("cat /stamp").stdout == b.run("cat /stamp").stdout


def test_names_versions_and_latest(server: LiveServer) -> None:
    name = unique("app")
    v1 = Image.from_name("debian").run_commands("echo one > /version")
    v2 = Image.from_name("debian").run_commands("echo two > /version")
    assert v1.tag(f"{name}:v1") == f"{name}:v1"
    with Client() as client:
        v1_id = client.build(v1).pinned  # cached: the build that tag() made
        v2_id = client.build(v2, tag=f"{name}:v2").pinned
        listed = {i.name: i.pinned for i in client.images() if i.name.startswith(f"{name}:")}
    assert v1_id and v2_id and v1_id != v2_id
    # Each name is the build it was given; the name alone (latest) the newest.
    assert listed == {f"{name}:v1": v1_id, f"{name}:v2": v2_id, f"{name}:latest": v2_id}
    for ref, want in ((f"{name}:v1", "one"), (f"{name}:v2", "two"), (name, "two")):
        with Sandbox.create(image=ref, timeout=60) as sb:
            assert sb.run("cat /version").stdout == f"{want}\n", ref
    # A named image is a base for more steps.
    with Sandbox.create(image=Image.from_name(f"{name}:v1").run_commands("echo x > /x")) as sb:
        assert sb.run("cat /version /x").stdout == "one\nx\n"


def test_bad_build_input(server: LiveServer) -> None:
    with pytest.raises(InvalidArgumentError, match=r"3\.11"):
        Sandbox.create(image=Image.debian_slim(python_version="3.9").run_commands("true"))
    with pytest.raises(InvalidArgumentError, match="invalid image name"):
        Image.from_name("debian").run_commands("true").tag("Bad Name")


def _build_sandboxes() -> dict[str, Sandbox]:
    """Every sandbox a build step ran in (or runs in), by ID."""
    return {s.id: s for s in Sandbox.list() if "stockade.build" in s.last_info.tags}


def test_a_build_past_its_timeout_is_stopped(server: LiveServer) -> None:
    img = Image.from_name("debian").run_commands(f"echo {unique('t')}; sleep 60")
    before = set(_build_sandboxes())
    started = time.monotonic()
    with pytest.raises(BuildError, match="timeout"), Client() as client:
        client.build(img, timeout=3)
    assert time.monotonic() - started < 20
    # The step's sandbox is stopped with it: seen to end, not merely not seen running.
    steps = [sb for sid, sb in _build_sandboxes().items() if sid not in before]
    assert len(steps) == 1, steps
    info = wait_ended(steps[0], timeout=10)
    assert info.status == "terminated", info


def test_dockerfile(server: LiveServer, tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "main.sh").write_text('#!/bin/sh\necho "main $GREETING"\n')
    (tmp_path / "app" / "main.sh").chmod(0o755)
    marker = unique("d")
    (tmp_path / "Dockerfile").write_text(
        "# syntax=docker/dockerfile:1\n"
        "ARG BASE=debian\n"
        "FROM ${BASE}\n"
        f"ARG MARK={marker}\n"
        "ENV GREETING=hello \\\n"
        "    OTHER=x\n"
        "WORKDIR /srv\n"
        "COPY app/ ./app/\n"
        'RUN echo "$MARK" > /srv/mark && ls /srv/app > /srv/listing\n'
        'CMD ["/srv/app/main.sh"]\n'
    )
    img = Image.from_dockerfile(tmp_path / "Dockerfile")
    with Sandbox.create(image=img, timeout=60) as sb:
        r = sb.run("cat mark listing; pwd; ./app/main.sh")
        assert r.stdout == f"{marker}\nmain.sh\n/srv\nmain hello\n", r.stderr
    (tmp_path / "Bad").write_text("FROM debian\nRUN true\nEXPOSE 80\n")
    with pytest.raises(InvalidArgumentError, match=":3"):
        Image.from_dockerfile(tmp_path / "Bad")


def test_export_of_a_built_image(server: LiveServer, tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    name = unique("exp")
    Image.from_name("debian").run_commands("echo hi > /hi").env({"E": "1"}).workdir("/w").tag(
        f"{name}:v1"
    )
    cli = str(Path(sys.executable).parent / "stockade")
    out = tmp_path / "out.tar"
    done = subprocess.run([cli, "image", "export", f"{name}:v1", str(out)],
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    config = json.loads(subprocess.run(
        ["skopeo", "inspect", "--config", f"oci-archive:{out}:v1"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout)["config"]  # fmt: skip
    assert "E=1" in config["Env"] and config["WorkingDir"] == "/w"


def test_the_image_user_runs_later_steps_and_the_sandboxs_commands(server: LiveServer) -> None:
    img = (
        Image.from_name("debian")
        .run_commands(f"useradd -m -u 1234 builder && echo {unique('u')}")
        .user("builder")
        .run_commands("whoami > /home/builder/who")
    )
    with Sandbox.create(image=img, timeout=60) as sb:
        r = sb.run("id -u; id -g; cat /home/builder/who; touch /root/x 2>&1 || echo denied")
        assert r.stdout.splitlines()[:3] == ["1234", "1234", "builder"], r.stdout
        assert "denied" in r.stdout
    with pytest.raises(InvalidArgumentError, match="nobody-here"):
        Sandbox.create(image=Image.from_name("debian").user("nobody-here").run_commands("true"))


def test_rm_and_gc_never_pull_files_from_under_a_sandbox(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """On a server with a cache of its own (layers and builds), so that collecting garbage
    cannot touch what other servers on this machine keep."""
    import secrets

    from .helpers import force_cleanup

    tmp = tmp_path_factory.mktemp("gc")
    live = LiveServer(data_dir=tmp / "data", token="sk_test_" + secrets.token_hex(8))
    live.extra_args = ["--cache-dir", str(private_cache(tmp))]
    live.start()
    try:
        with Client(live.url, live.token) as client:
            img = Image.from_name("debian").run_commands("head -c 3000000 /dev/urandom > /blob")
            info = client.build(img, tag="keep:v1")
            listed = {i.name: i for i in client.images()}
            assert listed["keep:v1"].size_mib is not None and listed["keep:v1"].created_at
            client.build(Image.from_name("debian").run_commands("echo unnamed > /u"))
            removed, freed = client.gc_images(min_age=0)
            assert removed >= 2 and freed > 0  # the unnamed build went, with its layer
            sb = Sandbox.create(image="keep:v1", client=client, timeout=120)
            try:
                client.delete_image("keep:v1")
                assert "keep:v1" not in {i.name for i in client.images()}
                assert client.gc_images(min_age=0) == (0, 0)  # its layer is mounted: kept
                assert sb.run("wc -c < /blob").stdout.strip() == "3000000"
            finally:
                sb.terminate()
            removed, freed = client.gc_images(min_age=0)
            assert removed >= 1 and freed >= 3_000_000
            with pytest.raises(NotFoundError):
                Sandbox.create(image=info.pinned or "", client=client, timeout=60)
    finally:
        live.terminate_all()
        live.stop()
        force_cleanup(tmp, live.data_dir)


def test_a_built_images_entrypoint_and_cmd(server: LiveServer) -> None:
    img = (
        Image.from_name("debian")
        .run_commands(f"echo {unique('e')}")
        .entrypoint(["/bin/sh", "-c"])
        .cmd(["echo built; exit 4"])
    )
    sb = Sandbox.create(image=img, image_entrypoint=True, timeout=60)
    info = wait_ended(sb, timeout=30)
    assert (info.reason, info.exit_code) == ("exited", 4), info
    assert sb.logs() == "built\n"


def test_a_step_that_floods_without_newlines_is_logged_in_bounded_lines(
    server: LiveServer,
) -> None:
    """A build step's output is a sandbox's: a line that never ends is cut into pieces, and
    a client that reads slowly gets a count of the lines it missed, not a server that
    holds them all."""
    marker = unique("flood")
    img = Image.from_name("debian").run_commands(
        f"echo {marker}; head -c 8000000 /dev/zero | tr '\\0' x; echo; seq 1 200000"
    )
    body = img.build_body({})
    lines = []
    with (
        httpx.Client(base_url=server.url, headers=server.headers, timeout=120) as c,
        c.stream("POST", "/v1/images/builds", json=body) as r,
    ):
        assert r.status_code == 200
        for i, raw in enumerate(r.iter_lines()):
            if i == 5:
                time.sleep(3)  # a slow reader while the step floods
            lines.append(json.loads(raw))
    assert lines[-1]["type"] == "done", lines[-1]
    logged = [e["line"] for e in lines if e["type"] == "log"]
    assert max(len(line) for line in logged) <= 16 * 1024 + 2
    assert sum(len(line.strip()) for line in logged if set(line.strip()) == {"x"}) <= 8_000_000
    assert any("lines dropped" in line for line in logged), logged[-5:]
