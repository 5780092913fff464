# This file is generated from src/stockade/_async/files.py by scripts/gen_sync.py.
# Do not edit it: edit the async original and run `python scripts/gen_sync.py`.
"""Whole-file verbs on a sandbox's filesystem: write, read, list, stat, mkdir, remove,
rename, chmod, the list of what changed, a live watch of changes, and signed URLs that move
a file without an API key.

Uploads and downloads stream in chunks of ``stockade._base.CHUNK_SIZE``, so a file of any
size moves without being held in memory.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from stockade import _base, _protocol
from stockade._sync.client import Client
from stockade.errors import NotFoundError, ServerError
from stockade.models import FileChanges, FileEvent, FileInfo

__all__ = ["FileContent", "Files"]

FileContent = _base.FileContent | Iterable[bytes]
"""What :meth:`Files.write` accepts: data, a binary file, or an iterator of chunks."""


def _upload_chunks(data: FileContent) -> Iterator[bytes]:
    # Files and plain iterables are read the same way in both flavours; only the async
    # flavour can be handed an async iterable (in the generated sync code, `else` is dead).
    if _base.is_sync_content(data):
        for chunk in _base.sync_chunks(data):
            yield chunk
    else:
        for chunk in data:
            yield bytes(chunk)


class Files:
    """The filesystem of one sandbox, as ``sb.files``. Paths are absolute sandbox paths.

    Example::

        sb.files.write("/app/main.py", "print('hi')\\n")
        print(sb.files.read_text("/app/main.py"))
        print([entry.name for entry in sb.files.list("/app")])
    """

    def __init__(self, client: Client, sandbox_id: str) -> None:
        self._client = client
        self._sandbox_id = sandbox_id
        self._path = _base.sandbox_path(sandbox_id, "/files")

    def __repr__(self) -> str:
        return f"<Files of {self._sandbox_id}>"

    def write(
        self, path: str, data: FileContent, *, user: str | None = None
    ) -> FileInfo:
        """Create or replace the file at ``path``; parent directories are created. The
        file belongs to ``user`` (a user of the image or ``"uid[:gid]"``; default: the
        sandbox's user).

        ``data`` is text (written as UTF-8), bytes, a binary file object, or an iterator of
        byte chunks; files and iterators are streamed, never read whole.

        Example::

            sb.files.write("/data/big.bin", open("big.bin", "rb"))
        """
        whole = _base.whole_content(data)
        answer = self._client.request(
            "PUT",
            self._path,
            params={"path": path, **({"user": user} if user is not None else {})},
            content=whole if whole is not None else _upload_chunks(data),
            timeout=_base.LONG_TIMEOUT,
        )
        return _base.parse(FileInfo.from_json, answer, "file info")

    def read_bytes(self, path: str) -> bytes:
        """The contents of the file at ``path``.

        Example::

            png = sb.files.read_bytes("/tmp/plot.png")
        """
        parts = []
        with self._client.stream("GET", self._path, params={"path": path}) as chunks:
            for chunk in chunks:
                parts.append(chunk)
        return b"".join(parts)

    def read_text(self, path: str, *, encoding: str = "utf-8") -> str:
        """The contents of the file at ``path`` as text.

        Example::

            print(sb.files.read_text("/etc/os-release"))
        """
        return (self.read_bytes(path)).decode(encoding)

    def read_to(self, path: str, dest: str | os.PathLike[str] | _base.Writable) -> int:
        """Stream the file at ``path`` into a local path or binary file; return its size in
        bytes.

        Example::

            sb.files.read_to("/app/out.tar", "out.tar")
        """
        size = 0
        with self._client.stream("GET", self._path, params={"path": path}) as chunks:
            if not isinstance(dest, str | os.PathLike):
                for chunk in chunks:
                    dest.write(chunk)
                    size += len(chunk)
                return size
            target = Path(dest)
            try:
                # Local disk writes of one chunk are short; a thread hop per chunk would
                # cost more than it saves the event loop.
                with target.open("wb") as out:
                    for chunk in chunks:
                        out.write(chunk)
                        size += len(chunk)
            except BaseException:
                # Never leave a truncated copy behind.
                target.unlink(missing_ok=True)
                raise
        return size

    def list(self, path: str = "/") -> builtins.list[FileInfo]:
        """The entries of the directory at ``path``, sorted by name.

        Example::

            for entry in sb.files.list("/app"):
                print(entry.name, entry.size_bytes)
        """
        data = self._client.request("GET", self._path + "/list", params={"path": path})
        return [
            _base.parse(FileInfo.from_json, item, "file info")
            for item in _base.field_list(data, "entries", "directory listing")
        ]

    def stat(self, path: str) -> FileInfo:
        """What is at ``path`` (a symlink itself, not its target).

        Example::

            info = sb.files.stat("/app/main.py")
            print(info.size_bytes, oct(info.mode))
        """
        data = self._client.request("GET", self._path + "/stat", params={"path": path})
        return _base.parse(FileInfo.from_json, data, "file info")

    def exists(self, path: str) -> bool:
        """Whether anything exists at ``path``.

        Example::

            if not sb.files.exists("/app"):
                sb.files.mkdir("/app")
        """
        try:
            self.stat(path)
        except NotFoundError:
            # The API answers not_found for a missing sandbox too; make sure that is not it,
            # so a wrong sandbox ID raises instead of reading as "no such file".
            self._client.request("GET", _base.sandbox_path(self._sandbox_id))
            return False
        return True

    def mkdir(
        self, path: str, *, parents: bool = True, user: str | None = None
    ) -> FileInfo:
        """Create the directory ``path`` (and missing parents unless ``parents=False``);
        ``path`` itself belongs to ``user`` (default: the sandbox's user).

        Example::

            sb.files.mkdir("/app/data")
        """
        data = self._client.request(
            "POST",
            self._path + "/mkdir",
            json={"path": path, "parents": parents},
            params={"user": user} if user is not None else None,
        )
        return _base.parse(FileInfo.from_json, data, "file info")

    def remove(self, path: str, *, recursive: bool = False) -> None:
        """Delete the file or directory at ``path``; a non-empty directory needs ``recursive``.

        Example::

            sb.files.remove("/app/cache", recursive=True)
        """
        self._client.request(
            "DELETE",
            self._path,
            params={"path": path, "recursive": "true" if recursive else "false"},
        )

    def changes(self, since: str | _base.HasId | None = None) -> FileChanges:
        """The paths added, modified or deleted since the sandbox's image, or since the
        memory snapshot ``since`` (its ID, or the :class:`Snapshot`): what a reviewer
        of an agent's work wants to see.

        A list of ``(path, kind)`` :class:`FileChange` tuples in tree order; ``kind`` is
        ``"added"``, ``"modified"`` or ``"deleted"``. A deleted directory is one entry; an
        added one is listed with everything in it. A file that was only touched is not
        modified. Works on a paused sandbox without waking it. At most 100 000 entries:
        ``.truncated`` says the list is incomplete.

        Example::

            for path, kind in sb.files.changes():
                print(kind, path)
            snap = sb.snapshot()
            sb.run("rm -rf /app/cache")
            print(sb.files.changes(since=snap))  # [FileChange('/app/cache', 'deleted')]
        """
        params = {"since": _base.ref_id(since)} if since is not None else None
        data = self._client.request("GET", self._path + "/changes", params=params)
        return _base.parse(FileChanges.from_json, data, "change list")

    def rename(self, src: str, dst: str) -> FileInfo:
        """Move ``src`` to ``dst`` (a file already at ``dst`` is replaced); the parent of
        ``dst`` must exist. Returns the info of ``dst``.

        Example::

            sb.files.rename("/app/out.tmp", "/app/out.json")
        """
        data = self._client.request(
            "POST", self._path + "/rename", json={"src": src, "dst": dst}
        )
        return _base.parse(FileInfo.from_json, data, "file info")

    def chmod(self, path: str, mode: int) -> FileInfo:
        """Set the permission bits of ``path`` to ``mode`` (0 to ``0o7777``); returns its
        new info.

        Example::

            sb.files.chmod("/app/run.sh", 0o755)
        """
        data = self._client.request(
            "POST", self._path + "/chmod", json={"path": path, "mode": mode}
        )
        return _base.parse(FileInfo.from_json, data, "file info")

    @contextmanager
    def watch(
        self, path: str, *, recursive: bool = False
    ) -> Iterator[Iterator[FileEvent]]:
        """Watch ``path`` (a file, a directory, or with ``recursive`` a directory's whole
        tree) and iterate its changes as they happen: :class:`FileEvent` ``create``,
        ``modify``, ``delete`` and ``rename``.

        The watch is in place once the ``with`` block is entered (a missing path raises
        :class:`NotFoundError` there), so changes made inside the block are seen; leaving
        it stops the watch in the sandbox. Iteration waits for the next event; if the
        sandbox ends meanwhile it raises (e.g. :class:`SandboxTerminatedError`).

        Example::

            with sb.files.watch("/app", recursive=True) as events:
                sb.run("touch /app/new.txt")
                for event in events:
                    print(event.type, event.path)  # create /app/new.txt
                    break
        """
        query = urlencode({"path": path, "recursive": "true" if recursive else "false"})
        with self._client.ndjson("GET", f"{self._path}/watch?{query}") as events:
            yield _file_events(events)

    def upload_url(self, path: str, *, expires: int = 3600) -> str:
        """A URL that lets any HTTP client write the file at ``path`` with a ``PUT`` of its
        contents, without an API key, for ``expires`` seconds (at most 7 days) and while
        the sandbox lives.

        Example::

            url = sb.files.upload_url("/data/in.bin")
            # curl -T in.bin "$url"
        """
        data = self._client.request(
            "POST", self._path + "/upload-url", json={"path": path, "expires": expires}
        )
        return self._signed(data)

    def download_url(self, path: str, *, expires: int = 3600) -> str:
        """A URL that lets any HTTP client read the file at ``path`` with a ``GET``,
        without an API key, for ``expires`` seconds (at most 7 days) and while the sandbox
        lives.

        Example::

            url = sb.files.download_url("/data/out.bin", expires=600)
            # curl -o out.bin "$url"
        """
        data = self._client.request(
            "GET", self._path + "/download-url", params={"path": path, "expires": str(expires)}
        )
        return self._signed(data)

    def _signed(self, data: object) -> str:
        # Joined to the base URL this client uses: the server's own idea of its address
        # may be wrong behind a proxy.
        relative = data.get("path") if isinstance(data, dict) else None
        if not isinstance(relative, str) or not relative.startswith("/"):
            raise ServerError(f"the server answered without a signed URL: {data!r:.200}")
        return self._client.url.rstrip("/") + relative


def _file_events(events: Iterator[Mapping[str, Any]]) -> Iterator[FileEvent]:
    for event in events:
        if event.get("type") == "error":  # the watch could not go on: its sandbox ended
            raise _protocol.error_from_event(event.get("error"))
        yield _base.parse(FileEvent.from_json, event, "file event")
