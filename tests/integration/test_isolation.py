"""What code inside a sandbox can see: the gVisor kernel, its own processes, files and network."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stockade import Image, Sandbox

from .conftest import REPO, SHARED_CACHE, LiveServer
from .helpers import unique


@pytest.fixture(scope="module")
def pair(server: LiveServer) -> Iterator[tuple[Sandbox, Sandbox]]:
    a = Sandbox.create(image="debian", timeout=600)
    b = Sandbox.create(image="debian", timeout=600)
    try:
        yield a, b
    finally:
        a.terminate()
        b.terminate()


def test_the_kernel_is_gvisor(pair: tuple[Sandbox, Sandbox]) -> None:
    sb, _ = pair
    dmesg = sb.run("dmesg")
    assert dmesg.exit_code == 0, dmesg.stderr
    assert "gVisor" in dmesg.stdout
    inside = sb.files.read_text("/proc/version")
    assert inside.strip()
    assert inside != Path("/proc/version").read_text()
    uname = sb.run("uname -r").stdout.strip()
    assert uname not in Path("/proc/version").read_text()


def test_only_the_sandboxs_own_processes_are_visible(
    server: LiveServer, pair: tuple[Sandbox, Sandbox]
) -> None:
    assert server.proc is not None
    sb, other = pair
    # A process in the other sandbox, to make sure it is not visible from this one.
    with other.exec("sleep", "9876"):
        pids = sb.run("ls /proc | grep -E '^[0-9]+$'").stdout.split()
        cmdlines = sb.run("for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done")
    numbers = sorted(int(p) for p in pids)
    assert 1 in numbers
    assert len(numbers) < 15, numbers
    assert server.proc.pid not in numbers or server.proc.pid < 15
    text = cmdlines.stdout
    host_side = ("stockade serve", "--data-dir", "uvicorn", "runsc", "pytest", "sleep 9876")
    for foreign in host_side:
        assert foreign not in text, text
    # PID 1 is the sandbox's own init, not the host's.
    assert "systemd" not in sb.files.read_text("/proc/1/cmdline")


def test_host_files_are_invisible(server: LiveServer, pair: tuple[Sandbox, Sandbox]) -> None:
    sb, _ = pair
    marker = Path("/tmp") / f"stockade-host-marker-{unique()}"
    marker.write_text("host secret")
    try:
        paths = [
            str(REPO),
            str(REPO / "pyproject.toml"),
            str(server.data_dir),
            str(server.data_dir / "state.db"),
            str(marker),
            "/var/cache/stockade",
        ]
        script = "; ".join(f"test -e '{p}' && echo 'VISIBLE {p}'" for p in paths) + "; true"
        r = sb.run(script)
        assert r.exit_code == 0
        assert r.stdout == "", r.stdout
        host_root = {p.name for p in Path("/root").iterdir()}
        inside_root = {e.name for e in sb.files.list("/root")}
        assert not (host_root & inside_root - {".bashrc", ".profile"}), inside_root
        # Nothing of the token either.
        assert server.token not in sb.run("env; cat /proc/1/environ").stdout
    finally:
        marker.unlink()


def test_block_network_reaches_nothing(server: LiveServer) -> None:
    with Sandbox.create(image="debian", block_network=True, timeout=120) as sb:
        dev = sb.files.read_text("/proc/net/dev")
        names = {line.split(":")[0].strip() for line in dev.splitlines()[2:] if ":" in line}
        assert names == {"lo", "eth0"}, dev  # its own veth, refused at the host's end
        # The host refuses every packet (a TCP reset): connecting out fails at once and
        # nothing leaves the machine.
        started = time.monotonic()
        r = sb.run(["bash", "-c", "exec 3<>/dev/tcp/1.1.1.1/80 && echo connected"], timeout=20)
        assert r.exit_code != 0
        assert "connected" not in r.stdout
        assert time.monotonic() - started < 5


def test_writes_stay_in_their_sandbox(pair: tuple[Sandbox, Sandbox]) -> None:
    a, b = pair
    secret = unique("secret")
    a.files.write(f"/tmp/{secret}", secret)
    a.run(f"echo {secret} >> /etc/motd && echo {secret} > /root/note").check()
    assert a.run(f"grep -c {secret} /etc/motd").stdout.strip() == "1"

    probe = f"ls /tmp /root; cat /etc/motd; test -e /tmp/{secret} && echo FOUND"
    assert secret not in b.run(probe).stdout
    with Sandbox.create(image="debian") as fresh:
        assert secret not in fresh.run(probe).stdout
    # The image itself on the host is untouched (the test servers share its base images).
    image_motd = SHARED_CACHE / "images" / "debian" / "rootfs" / "etc" / "motd"
    assert secret not in image_motd.read_text()


def test_an_images_symlinks_never_lead_the_workdir_onto_the_host(server: LiveServer) -> None:
    """An image may hold any symlink (`/w -> /tmp`); the working directory the server
    makes before the sandbox starts is made inside the sandbox's root all the same."""
    probe = unique("workdir")
    image = Image.from_name("debian").run_commands("ln -s /tmp /w")
    with Sandbox.create(image=image, workdir=f"/w/{probe}") as sb:
        assert not Path("/tmp", probe).exists()
        assert sb.run("pwd -P").stdout.strip() == f"/tmp/{probe}"
        assert sb.run(f"test -d /tmp/{probe}").exit_code == 0
