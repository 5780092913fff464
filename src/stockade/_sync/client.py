# This file is generated from src/stockade/_async/client.py by scripts/gen_sync.py.
# Do not edit it: edit the async original and run `python scripts/gen_sync.py`.
"""The connection to a Stockade server: HTTP requests, streams and exec WebSockets.

Every HTTP call of the SDK goes through :class:`Client`, which is therefore the one
boundary where httpx errors become Stockade errors (WebSocket errors are translated in
``stockade._transport``, the other boundary).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import httpx

from stockade import _base, _config, _protocol
from stockade._transport import WebSocket
from stockade.errors import InvalidArgumentError, ServerError
from stockade.image import Image, context_tar, register_client
from stockade.models import ImageInfo, UsageReport

__all__ = ["Client", "client_for"]


class Client:
    """A connection to one Stockade server, shared by any number of sandboxes.

    ``url`` and ``token`` default to ``$STOCKADE_URL``/``$STOCKADE_TOKEN`` (and the local
    server's token file); see :mod:`stockade._config`. An ``https://`` server's certificate
    is checked against the system's CAs and ``$STOCKADE_CA_BUNDLE``; ``verify`` changes
    that: the path of a CA bundle to trust instead of the variable's (a self-signed
    server's certificate, or a private CA), ``False`` to skip the check, or an
    :class:`ssl.SSLContext`. A client keeps connections open for
    reuse, so close it when done (``with`` does). The sandbox methods create a
    client of their own when none is passed; that one keeps no idle connections, so it
    needs no closing.

    A client may be used by many tasks or threads at once.

    Example::

        from stockade import Client, Sandbox

        with Client() as client:
            print([image.name for image in client.images()])
            sb = Sandbox.create(client=client)
            sb.terminate()

        remote = Client("https://sandbox-host:7423", verify="sandbox-host-cert.pem")
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = _base.DEFAULT_TIMEOUT,
        keepalive: bool = True,
        verify: _base.VerifyTypes = True,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = _config.resolve_url(url)
        self._headers = _base.auth_headers(_config.resolve_token(token, self.url))
        self._ssl = _base.client_ssl_context(verify)
        limits = httpx.Limits() if keepalive else httpx.Limits(max_keepalive_connections=0)
        self._http = httpx.Client(
            base_url=self.url,
            headers=self._headers,
            timeout=httpx.Timeout(timeout, connect=_base.CONNECT_TIMEOUT),
            limits=limits,
            transport=transport,
            verify=self._ssl,
        )

    def __repr__(self) -> str:
        return f"<Client url={self.url!r}>"

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the pooled connections; the client is unusable afterwards."""
        self._http.close()

    # -- public server-level calls -------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``GET /healthz``: the server's status and version.

        Example::

            print((client.health())["version"])
        """
        data = self.request("GET", "/healthz")
        if not isinstance(data, dict):
            raise ServerError(f"the server sent a malformed health answer: {data!r}")
        return data

    def images(self) -> list[ImageInfo]:
        """The base images the server knows, built or not.

        Example::

            ready = [image.name for image in client.images() if image.ready]
        """
        data = self.request("GET", "/v1/images")
        return [
            _base.parse(ImageInfo.from_json, item, "image")
            for item in _base.field_list(data, "images", "image list")
        ]

    def build_image(
        self, name: str, *, on_log: Callable[[str], object] | None = None
    ) -> ImageInfo:
        """Build image ``name`` unless it is built already; ``on_log`` gets each log line.

        Example::

            image = client.build_image("python", on_log=print)
            assert image.ready
        """
        return self._image_events(
            _base.image_path(name, "/build"), None, on_log, f"the build of image {name!r}"
        )

    def build(
        self,
        image: Image,
        *,
        tag: str | None = None,
        on_log: Callable[[str], object] | None = None,
        timeout: float | None = None,
    ) -> ImageInfo:
        """Build ``image`` on the server (steps already built come from the cache) and,
        with ``tag`` (``name:tag``), name it. ``on_log`` gets each line of the build log.
        A failing step raises :class:`~stockade.BuildError` with its exit code and output.

        Example::

            info = client.build(Image.debian_slim().pip_install("httpx"), tag="agent:v1")
        """
        contexts: dict[int, str] = {}
        for index, copy in image.copies:
            # Local files, read once per build; the server keeps them by digest.
            data, digest = context_tar(copy)
            path = f"/v1/images/contexts/{digest}"
            if not self._has(path):
                self.request("PUT", path, content=data, timeout=_base.LONG_TIMEOUT)
            contexts[index] = digest
        body = image.build_body(contexts)
        if tag is not None:
            body["tag"] = tag
        if timeout is not None:
            body["timeout"] = timeout
        return self._image_events("/v1/images/builds", body, on_log, "the build")

    def delete_image(self, name: str) -> None:
        """Delete a named image (``name:tag``) or forget a pulled one. Its layers stay until
        :meth:`gc_images`, so running sandboxes of it are unaffected."""
        self.request("DELETE", _base.image_path(name).replace("%2F", "/"))

    def gc_images(self, *, min_age: float = 60.0) -> tuple[int, int]:
        """Remove the layers no image or sandbox needs; returns (entries removed, bytes
        freed). Entries younger than ``min_age`` seconds are kept."""
        data = self.request("POST", "/v1/images/gc", params={"min_age": str(min_age)})
        return int(data["removed"]), int(data["freed_bytes"])

    def pull_image(
        self,
        ref: str,
        *,
        auth: tuple[str, str] | None = None,
        on_log: Callable[[str], object] | None = None,
    ) -> ImageInfo:
        """Pull a registry image onto the server (layers already there are not fetched
        again); ``on_log`` gets each progress line. ``auth`` is ``(username, password)``.

        Example::

            image = client.pull_image("127.0.0.1:5000/team/app:v1", on_log=print)
            print(image.digest)
        """
        body: dict[str, object] = {"ref": ref}
        if auth is not None:
            body["auth"] = {"username": auth[0], "password": auth[1]}
        return self._image_events("/v1/images/pull", body, on_log, f"pulling {ref!r}")

    def usage(
        self,
        tenant: str | None = None,
        *,
        since: _base.When | None = None,
        until: _base.When | None = None,
    ) -> UsageReport:
        """What tenants used over the whole minutes from ``since`` (default: the start of
        this month, UTC) up to ``until`` (default: now): sandbox, CPU and memory time,
        snapshot and volume storage, and execs. A key reads its own tenant's usage; the
        admin token every tenant's, or ``tenant``'s. Times are datetimes (naive ones are
        UTC), Unix seconds, or ISO 8601 strings.

        Example::

            import datetime as dt

            report = client.usage(since=dt.datetime.now(dt.UTC) - dt.timedelta(days=1))
            for used in report.tenants:
                print(used.tenant, used.cpu_seconds, used.memory_gib_seconds)
        """
        data = self.request(
            "GET", "/v1/usage", params=_base.usage_params(tenant, since, until)
        )
        return _base.parse(UsageReport.from_json, data, "usage report")

    def _image_events(
        self,
        path: str,
        body: object,
        on_log: Callable[[str], object] | None,
        what: str,
    ) -> ImageInfo:
        """POST to an image operation that streams NDJSON ``log`` events and ends with
        ``done`` (the image) or ``error``."""
        with self.ndjson("POST", path, json=body) as events:
            for event in events:
                kind = event["type"]
                if kind == "log" and on_log is not None:
                    on_log(str(event.get("line", "")))
                elif kind == "done":
                    return _base.parse(ImageInfo.from_json, event.get("image"), "image")
                elif kind == "error":
                    raise _protocol.error_from_event(event.get("error"))
        raise ServerError(f"{what} ended without a result; see the server log")

    # -- the transport, used by sandboxes, files and processes ---------------------------

    def _has(self, path: str) -> bool:
        """Whether ``HEAD path`` finds something (uploads are skipped when it does)."""
        try:
            response = self._http.request("HEAD", path)
        except httpx.HTTPError as exc:
            raise _base.transport_error(exc, url=self.url, action=f"HEAD {path}") from exc
        return response.status_code == 200

    def request(
        self,
        method: str,
        path: str,
        *,
        params: httpx.QueryParams | Mapping[str, str] | None = None,
        json: object = None,
        content: bytes | Iterable[bytes] | None = None,
        timeout: httpx.Timeout | None = None,
    ) -> Any:
        """Send one request and return its decoded JSON (``None`` for an empty answer).

        An error status raises the matching :class:`~stockade.errors.StockadeError`.
        """
        action = f"{method} {path}"
        extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        try:
            response = self._http.request(
                method, path, params=params, json=json, content=content, **extra
            )
        except httpx.HTTPError as exc:
            raise _base.transport_error(exc, url=self.url, action=action) from exc
        if response.status_code >= 400:
            raise _base.error_for_response(response.status_code, response.content, response.headers)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ServerError(
                f"{action}: the server answered with non-JSON: {response.text[:200]!r}"
            ) from None

    @contextmanager
    def stream(
        self,
        method: str,
        path: str,
        *,
        params: httpx.QueryParams | Mapping[str, str] | None = None,
        json: object = None,
        timeout: httpx.Timeout | None = _base.LONG_TIMEOUT,
    ) -> Iterator[Iterator[bytes]]:
        """Send a request and yield its body as chunks of bytes, as they arrive.

        Example::

            with client.stream("GET", "/v1/sandboxes/sb-1/logs") as chunks:
                for chunk in chunks:
                    ...
        """
        action = f"{method} {path}"
        request = self._http.build_request(method, path, params=params, json=json, timeout=timeout)
        try:
            response = self._http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise _base.transport_error(exc, url=self.url, action=action) from exc
        try:
            if response.status_code >= 400:
                try:
                    body = response.read()
                except httpx.HTTPError as exc:
                    raise _base.transport_error(exc, url=self.url, action=action) from exc
                raise _base.error_for_response(response.status_code, body, response.headers)
            yield self._chunks(response, action)
        finally:
            response.close()

    def _chunks(self, response: httpx.Response, action: str) -> Iterator[bytes]:
        try:
            # No chunk size: httpx would hold bytes back until a whole chunk filled, and
            # a stream of small events (build logs, exec output, followed logs) would
            # arrive all at once at the end.
            for chunk in response.iter_bytes():
                yield chunk
        except httpx.HTTPError as exc:
            raise _base.transport_error(exc, url=self.url, action=action) from exc

    @contextmanager
    def ndjson(
        self,
        method: str,
        path: str,
        *,
        json: object = None,
    ) -> Iterator[Iterator[Mapping[str, Any]]]:
        """Send a request and yield its NDJSON answer as decoded events."""
        with self.stream(method, path, json=json) as chunks:
            yield self._events(chunks)

    def _events(self, chunks: Iterator[bytes]) -> Iterator[Mapping[str, Any]]:
        buffer = bytearray()
        for chunk in chunks:
            # Only the new bytes can hold a newline: rescanning a long partial line (a big
            # base64 output event) on every chunk would be quadratic.
            scan = len(buffer)
            buffer += chunk
            start = 0
            while (end := buffer.find(b"\n", scan)) >= 0:
                line = bytes(buffer[start:end])
                start = scan = end + 1
                if line.strip():
                    yield _protocol.decode_json_event(line)
            del buffer[:start]
        if buffer.strip():
            yield _protocol.decode_json_event(bytes(buffer))

    def connect_ws(self, path: str) -> WebSocket:
        """Open a WebSocket to ``path`` with this client's credentials."""
        return WebSocket.connect(
            _base.ws_url(self.url, path),
            headers=self._headers,
            action=f"GET {path}",
            ssl_context=self._ssl,
        )


def client_for(client: Client | None, url: str | None, token: str | None) -> Client:
    """The client a classmethod of the SDK talks through: ``client``, or a new one for
    ``url``/``token`` (else the environment)."""
    if client is None:
        # An implicit client keeps no idle connections, so an object that is simply dropped
        # leaves no socket behind; pass client= to reuse connections across calls.
        return Client(url, token, keepalive=False)
    if url is not None or token is not None:
        raise InvalidArgumentError("pass either client= or url=/token=, not both")
    return client


# The client that Image.tag and Image.atag open when they are given none: each flavour of the
# SDK registers its own, so that the shared Image imports neither.
register_client(Client)
