"""sb.files.rename / chmod / watch / upload_url / download_url: what the SDK sends and how it
reads the answers (sync and async), against the fake API."""

from __future__ import annotations

import json

import pytest

from stockade import AsyncSandbox, FileEvent, Sandbox, SandboxTerminatedError, ServerError
from tests.unit.fakes import FakeApi, error_body

INFO = {"path": "/app/b", "name": "b", "type": "file", "size": 1, "mode": 0o750, "mtime": 1.0}
FILES = "/v1/sandboxes/sb-1/files"


def test_rename_and_chmod_send_json_and_read_file_info(sb: Sandbox, api: FakeApi) -> None:
    api.errors[("POST", FILES + "/rename")] = (200, INFO)
    assert sb.files.rename("/app/a", "/app/b").path == "/app/b"
    assert json.loads(api.last("POST").content) == {"src": "/app/a", "dst": "/app/b"}
    api.errors[("POST", FILES + "/chmod")] = (200, INFO)
    assert sb.files.chmod("/app/b", 0o750).mode == 0o750
    assert json.loads(api.last("POST").content) == {"path": "/app/b", "mode": 0o750}


def test_signed_urls_join_the_clients_own_base(sb: Sandbox, api: FakeApi) -> None:
    relative = "/v1/signed/sandboxes/sb-1/files?path=%2Fa&op=download&sig=ab"
    answer = {"url": "http://elsewhere:1/x", "path": relative, "method": "GET", "expires_at": 9}
    api.errors[("GET", FILES + "/download-url")] = (200, answer)
    url = sb.files.download_url("/a", expires=60)
    assert url.endswith(relative) and not url.startswith("http://elsewhere")
    assert dict(api.last("GET").url.params) == {"path": "/a", "expires": "60"}
    api.errors[("POST", FILES + "/upload-url")] = (200, {**answer, "method": "PUT"})
    sb.files.upload_url("/a")
    assert json.loads(api.last("POST").content) == {"path": "/a", "expires": 3600}
    api.errors[("GET", FILES + "/download-url")] = (200, {"url": "x"})
    with pytest.raises(ServerError, match="signed URL"):
        sb.files.download_url("/a")


def _stream(*lines: dict[str, object]) -> bytes:
    return b"\n".join(json.dumps(line).encode() for line in lines) + b"\n\n"


def test_watch_yields_events_and_raises_the_streams_error(sb: Sandbox, api: FakeApi) -> None:
    body = _stream(
        {"type": "create", "path": "/app/n", "dir": True},
        {"type": "rename", "path": "/app/a", "dest": "/app/b", "dir": False},
        {"type": "overflow", "message": "events were lost"},
        {"type": "error", "error": error_body("sandbox_terminated", "sandbox sb-1 ended")["error"]},
    )
    api.errors[("GET", FILES + "/watch")] = (200, body)
    seen: list[FileEvent] = []
    with (
        pytest.raises(SandboxTerminatedError, match="sb-1 ended"),
        sb.files.watch("/app", recursive=True) as events,
    ):
        seen.extend(events)
    assert seen == [
        FileEvent("create", "/app/n", None, True),
        FileEvent("rename", "/app/a", "/app/b", False),
        FileEvent("overflow", message="events were lost"),
    ]
    assert dict(api.last("GET").url.params) == {"path": "/app", "recursive": "true"}


async def test_async_watch(asb: AsyncSandbox, api: FakeApi) -> None:
    api.errors[("GET", FILES + "/watch")] = (200, _stream({"type": "delete", "path": "/x"}))
    async with asb.files.watch("/x") as events:
        assert [e async for e in events] == [FileEvent("delete", "/x")]
    assert api.last("GET").url.params["recursive"] == "false"
