"""Raw runsc baselines, measured the way a user of plain runsc would do the same work.

Each raw sandbox gets an OCI bundle whose root is the same read-only image layer that
Stockade uses, with runsc's own in-memory overlay for writes (``--overlay2=root:memory``),
so no mount work of ours is involved.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from pathlib import Path


class RawRunsc:
    def __init__(self, runsc: str, image_root: Path, work: Path) -> None:
        self.runsc = runsc
        self.image_root = image_root
        self.work = work
        self.root = work / "runsc-root"
        self.root.mkdir(parents=True, exist_ok=True)

    def _argv(self, *verb: str) -> list[str]:
        return [
            self.runsc, f"--root={self.root}", "--platform=systrap",
            "--network=none", "--overlay2=root:memory", *verb,
        ]  # fmt: skip

    def _bundle(self, sid: str) -> Path:
        bundle = self.work / sid
        bundle.mkdir()
        spec = {
            "ociVersion": "1.0.2",
            "process": {
                "user": {"uid": 0, "gid": 0},
                "args": ["sleep", "infinity"],
                "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "cwd": "/",
            },
            "root": {"path": str(self.image_root), "readonly": True},
            "hostname": sid,
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"},
            ],
            "linux": {
                "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")]
            },
        }
        (bundle / "config.json").write_text(json.dumps(spec))
        return bundle

    def start(self) -> str:
        """``runsc run --detach``; returns the sandbox ID."""
        sid = "raw-" + uuid.uuid4().hex[:10]
        bundle = self._bundle(sid)
        # Files, not pipes: the detached sandbox inherits these descriptors.
        with open(bundle / "out.log", "wb") as out:
            subprocess.run(
                self._argv("run", "--detach", f"--bundle={bundle}", sid),
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, check=True,
            )  # fmt: skip
        return sid

    def exec(self, sid: str, *argv: str, stdin: bytes | None = None) -> bytes:
        result = subprocess.run(
            self._argv("exec", sid, *argv), input=stdin, capture_output=True, check=True
        )
        return result.stdout

    def spawn_floor(self, sid: str, count: int = 10) -> float:
        """Seconds one fork + exec + wait of ``/bin/true`` takes *inside* the sandbox (the
        mean of ``count`` in a shell loop, timed in there). Every exec pays for making a
        process in gVisor, however it reaches the sandbox; a vfork-based spawn (the agent's)
        saves only the copy of the shell's small address space."""
        script = (
            f"s=$(date +%s%N); i=0; while [ $i -lt {count} ]; do /bin/true; i=$((i+1)); done; "
            "e=$(date +%s%N); echo $((e-s))"
        )
        return int(self.exec(sid, "sh", "-c", script)) / count / 1e9

    def first_output(self, sid: str, *argv: str) -> float:
        """Seconds until the first byte of an exec's output arrives."""
        t0 = time.perf_counter()
        p = subprocess.Popen(self._argv("exec", sid, *argv), stdout=subprocess.PIPE)
        assert p.stdout is not None
        p.stdout.read(1)
        elapsed = time.perf_counter() - t0
        p.stdout.read()
        p.wait()
        return elapsed

    def checkpoint(self, sid: str, image_path: Path, *, leave_running: bool = True) -> None:
        """``runsc checkpoint`` of ``sid`` into ``image_path``, uncompressed as Stockade's;
        without ``leave_running`` the sandbox stops once saved (a pause)."""
        image_path.mkdir(parents=True, exist_ok=True)
        keep = ["--leave-running"] if leave_running else []
        subprocess.run(
            self._argv("checkpoint", *keep, "--compression=none", f"--image-path={image_path}",
                       sid),
            stdin=subprocess.DEVNULL, capture_output=True, check=True,
        )  # fmt: skip

    def restore(self, image_path: Path) -> str:
        """``runsc restore --detach`` of a checkpoint into a new sandbox (a new bundle over
        the same rootfs, the same flags); returns its ID."""
        sid = "raw-" + uuid.uuid4().hex[:10]
        bundle = self._bundle(sid)
        # Files, not pipes: the detached sandbox inherits these descriptors.
        try:
            with open(bundle / "out.log", "wb") as out:
                subprocess.run(
                    self._argv("restore", "--detach", f"--image-path={image_path}",
                               f"--bundle={bundle}", sid),
                    stdin=subprocess.DEVNULL, stdout=out, stderr=out, check=True,
                )  # fmt: skip
        except BaseException:
            self.delete(sid)
            raise
        return sid

    def delete(self, sid: str) -> None:
        subprocess.run(self._argv("delete", "--force", sid), capture_output=True, check=False)
        shutil.rmtree(self.work / sid, ignore_errors=True)
