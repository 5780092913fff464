"""A small client for the OCI distribution API: manifests, blobs and the two login schemes.

Only what a pull needs, written against the specs rather than one registry's habits:

- ``GET``/``HEAD /v2/<name>/manifests/<ref>`` accepting OCI indexes and manifests and Docker's
  v2 lists and manifests (never schema 1, which carries no content digests worth trusting);
- a multi-platform index is narrowed to linux/amd64 without a variant, the one platform that
  Stockade's gVisor sandboxes run;
- ``GET /v2/<name>/blobs/<digest>`` streamed to a file and hashed on the way, so nothing that
  fails its digest is ever renamed into place;
- authentication as registries actually do it: try anonymously, and on ``401`` follow the
  ``WWW-Authenticate`` challenge: ``Bearer`` means fetching a token from the named realm (with
  the user's credentials when given), ``Basic`` means sending the credentials directly.

Every failure leaves as one of the Stockade errors below, translated here and nowhere else::

    RegistryUnreachableError  connection refused, DNS failure, TLS failure, timeout
    ImageNotFoundError        404 for the repository, tag or digest
    RegistryAuthError         401/403 after authenticating, or a refused token request
    UnsupportedImageError     schema 1, an artifact that is not an image, no linux/amd64
    DigestMismatchError       content that does not hash to its digest
    RegistryError             anything else the registry answers (5xx, 429, malformed JSON)

A ``RegistryClient`` talks to one repository. It may be shared by tasks of one event loop
(a pull downloads layers concurrently through one client); it is not thread-safe.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import httpx

from ....errors import (
    DigestMismatchError,
    ImageNotFoundError,
    RegistryAuthError,
    RegistryError,
    RegistryUnreachableError,
    UnsupportedImageError,
)
from .reference import Reference, is_loopback_host

__all__ = [
    "CONFIG_MEDIA_TYPES",
    "LAYER_MEDIA_TYPES",
    "MANIFEST_ACCEPT",
    "Descriptor",
    "ImageManifest",
    "RawManifest",
    "RegistryAuth",
    "RegistryClient",
    "short_digest",
]

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
_INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
_MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
_SCHEMA1_TYPES = frozenset(
    {
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
    }
)
MANIFEST_ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))

CONFIG_MEDIA_TYPES = frozenset(
    {"application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"}
)
LAYER_MEDIA_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    }
)

# The distribution spec lets registries refuse manifests over 4 MiB; image configs with a long
# history stay well under 8 MiB. The caps keep a hostile registry from filling memory.
_MAX_MANIFEST = 4 * 1024 * 1024
_MAX_CONFIG = 8 * 1024 * 1024
_DIGEST = re.compile(r"(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})")
_PLATFORM = ("linux", "amd64")
_CHUNK = 1024 * 1024
_WRITE_BATCH = 4 * 1024 * 1024
_DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=15.0)
_CHECK_NETWORK = "check the registry address, that it is running, and the server's network"


@dataclass(frozen=True)
class RegistryAuth:
    """Credentials for a registry login (a password or an access token as the password)."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class Descriptor:
    """A content descriptor from a manifest: what a blob is, its digest and its size."""

    media_type: str
    digest: str
    size: int

    @classmethod
    def parse(cls, value: object, where: str) -> Descriptor:
        if not isinstance(value, Mapping):
            raise RegistryError(f"{where} is not a descriptor object")
        media_type, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
        if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
            raise RegistryError(f"{where} has no valid digest ({digest!r})")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise RegistryError(f"{where} has no valid size ({size!r})")
        return cls(media_type if isinstance(media_type, str) else "", digest, size)


@dataclass(frozen=True)
class RawManifest:
    """A manifest or index as served: its media type, digest (verified) and bytes."""

    media_type: str
    digest: str
    body: bytes

    def json(self) -> dict[str, Any]:
        try:
            value = json.loads(self.body)
        except ValueError as exc:
            raise RegistryError(f"manifest {self.digest} is not valid JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise RegistryError(f"manifest {self.digest} is not a JSON object")
        return value


@dataclass(frozen=True)
class ImageManifest:
    """The linux/amd64 image manifest a reference resolves to.

    ``digest`` names the image manifest itself; ``resolved_digest`` is what the reference
    pointed at, the multi-platform index when there was one (equal to ``digest`` otherwise).
    """

    digest: str
    resolved_digest: str
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


def short_digest(digest: str) -> str:
    """``sha256:`` and the first 12 hex digits, for log and progress lines."""
    algo, _, hexdigits = digest.partition(":")
    return f"{algo}:{hexdigits[:12]}…"


class RegistryClient:
    """Talks to the registry of ``reference`` about its repository.

    Example::

        async with RegistryClient(parse_reference("localhost:5000/app")) as client:
            manifest = await client.resolve("latest")
            await client.fetch_blob(manifest.layers[0].digest, Path("/tmp/layer"))

    ``transport`` replaces the network (tests pass an ``httpx.MockTransport``).
    """

    def __init__(
        self,
        reference: Reference,
        *,
        auth: RegistryAuth | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: httpx.Timeout = _DEFAULT_TIMEOUT,
    ) -> None:
        self.reference = reference
        self._auth = auth
        self._authorization: str | None = None
        self._base = f"{reference.base_url}/v2/{reference.repository}"
        # trust_env=False: no proxy or netrc from the server's environment changes where a
        # pull goes, and credentials go only where the caller said.
        self._http = httpx.AsyncClient(
            transport=transport, timeout=timeout, trust_env=False, follow_redirects=True
        )

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    @property
    def _registry(self) -> str:
        return self.reference.registry

    @property
    def _repo(self) -> str:
        return f"{self.reference.registry}/{self.reference.repository}"

    def _name(self, ref: str) -> str:
        return f"{self._repo}{'@' if _DIGEST.fullmatch(ref) else ':'}{ref}"

    # -- manifests -------------------------------------------------------------------------

    async def manifest_digest(self, ref: str) -> str:
        """The digest ``ref`` (a tag or digest) points at, from one HEAD request.

        Falls back to a GET when the registry does not send ``Docker-Content-Digest``.
        """
        resp = await self._request("HEAD", f"manifests/{ref}", {"Accept": MANIFEST_ACCEPT})
        try:
            await self._check(resp, self._name(ref), manifest=True)
            digest = str(resp.headers.get("docker-content-digest", ""))
        finally:
            await resp.aclose()
        if _DIGEST.fullmatch(digest):
            return digest
        return (await self.get_manifest(ref)).digest

    async def get_manifest(self, ref: str) -> RawManifest:
        """The manifest or index ``ref`` names, its digest checked against what names it."""
        what = self._name(ref)
        resp = await self._request("GET", f"manifests/{ref}", {"Accept": MANIFEST_ACCEPT})
        try:
            await self._check(resp, what, manifest=True)
            body = await _read_capped(resp, _MAX_MANIFEST, f"the manifest of {what}")
            header_digest = resp.headers.get("docker-content-digest", "")
            content_type = resp.headers.get("content-type", "").split(";")[0].strip()
        finally:
            await resp.aclose()
        expected = ref if _DIGEST.fullmatch(ref) else header_digest
        algo = expected.partition(":")[0] if _DIGEST.fullmatch(expected) else "sha256"
        digest = f"{algo}:{hashlib.new(algo, body).hexdigest()}"
        if _DIGEST.fullmatch(expected) and digest != expected:
            raise DigestMismatchError(
                f"the manifest of {what} hashes to {digest}, not {expected}: the registry "
                "served corrupt or tampered content"
            )
        media_type = content_type
        if media_type not in _INDEX_TYPES | _MANIFEST_TYPES | _SCHEMA1_TYPES:
            media_type = _sniff_media_type(body) or content_type
        return RawManifest(media_type, digest, body)

    async def resolve(self, ref: str) -> ImageManifest:
        """The linux/amd64 image manifest of ``ref``, going through an index if there is one."""
        raw = await self.get_manifest(ref)
        resolved = raw.digest
        for _ in range(3):  # an index may nest another index; more than that is not sane
            if raw.media_type in _MANIFEST_TYPES:
                return _parse_manifest(raw, resolved, self._name(ref))
            if raw.media_type in _SCHEMA1_TYPES:
                raise UnsupportedImageError(
                    f"{self._name(ref)} uses the retired Docker schema 1 manifest format; "
                    "push it again with a current docker, podman or skopeo"
                )
            if raw.media_type not in _INDEX_TYPES:
                raise UnsupportedImageError(
                    f"{self._name(ref)} is not a container image (manifest type "
                    f"{raw.media_type or 'unknown'!r})"
                )
            chosen = _pick_platform(raw.json(), self._name(ref))
            raw = await self.get_manifest(chosen)
        raise UnsupportedImageError(f"{self._name(ref)} nests image indexes too deeply")

    # -- blobs -----------------------------------------------------------------------------

    async def get_blob_bytes(self, desc: Descriptor, *, limit: int = _MAX_CONFIG) -> bytes:
        """A small blob (an image config) in memory, its digest and size verified."""
        if desc.size > limit:
            raise RegistryError(f"blob {desc.digest} is {desc.size} bytes, over {limit}")
        resp = await self._request("GET", f"blobs/{desc.digest}", {})
        try:
            await self._check(resp, f"blob {desc.digest} of {self._repo}", manifest=False)
            body = await _read_capped(resp, limit, f"blob {desc.digest}")
        finally:
            await resp.aclose()
        algo, _, hexdigits = desc.digest.partition(":")
        if hashlib.new(algo, body).hexdigest() != hexdigits or len(body) != desc.size:
            raise DigestMismatchError(
                f"blob {desc.digest} of {self._repo} does not match its digest and size: the "
                "registry served corrupt or tampered content"
            )
        return body

    async def fetch_blob(
        self,
        digest: str,
        dest: Path,
        *,
        size: int | None = None,
        on_bytes: Callable[[int], None] | None = None,
    ) -> int:
        """Stream blob ``digest`` to ``dest``, verifying it on the way; return its size.

        The bytes go to ``dest`` + ``.part`` first, renamed only once digest and size match;
        a failed or cancelled download removes the partial file.
        """
        algo, _, hexdigits = digest.partition(":")
        hasher = hashlib.new(algo)
        part = dest.with_name(dest.name + ".part")
        received = 0
        resp = await self._request("GET", f"blobs/{digest}", {})
        try:
            await self._check(resp, f"blob {digest} of {self._repo}", manifest=False)
            out = await asyncio.to_thread(open, part, "wb")
            try:
                # Disk writes go to a thread in batches: a write can stall on dirty-page
                # throttling, and the event loop serves every other sandbox meanwhile.
                pending = bytearray()
                try:
                    async for chunk in resp.aiter_bytes(_CHUNK):
                        received += len(chunk)
                        if size is not None and received > size:
                            raise DigestMismatchError(
                                f"blob {digest} of {self._repo} is longer than the {size} "
                                "bytes its manifest says"
                            )
                        hasher.update(chunk)
                        pending += chunk
                        if len(pending) >= _WRITE_BATCH:
                            await asyncio.to_thread(out.write, bytes(pending))
                            pending.clear()
                        if on_bytes is not None:
                            on_bytes(len(chunk))
                except httpx.TransportError as exc:
                    raise RegistryUnreachableError(
                        f"the connection to registry {self._registry} broke while downloading "
                        f"blob {digest} ({type(exc).__name__}: {exc}); try again, or "
                        f"{_CHECK_NETWORK}"
                    ) from exc
                await asyncio.to_thread(out.write, bytes(pending))
            finally:
                await asyncio.to_thread(out.close)
            if hasher.hexdigest() != hexdigits or (size is not None and received != size):
                raise DigestMismatchError(
                    f"blob {digest} of {self._repo} hashes to {algo}:{hasher.hexdigest()} "
                    f"({received} bytes): the registry served corrupt or tampered content"
                )
            os.replace(part, dest)
            return received
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        finally:
            await resp.aclose()

    # -- requests and authentication -------------------------------------------------------

    async def _request(self, method: str, path: str, headers: Mapping[str, str]) -> httpx.Response:
        """Send one request (streamed: the caller closes it), logging in once on a 401."""
        url = f"{self._base}/{path}"
        for attempt in range(2):
            request = self._http.build_request(method, url, headers=self._headers(headers))
            resp = await self._send(request, stream=True)
            if resp.status_code != 401 or attempt == 1:
                return resp
            challenge = resp.headers.get("www-authenticate", "")
            await resp.aclose()
            await self._login(challenge)
        raise AssertionError("unreachable")  # pragma: no cover

    def _headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        result = dict(headers)
        if self._authorization:
            result["Authorization"] = self._authorization
        return result

    async def _send(self, request: httpx.Request, *, stream: bool) -> httpx.Response:
        host = request.url.netloc.decode()
        try:
            return await self._http.send(request, stream=stream)
        except httpx.TimeoutException as exc:
            raise RegistryUnreachableError(
                f"{host} did not answer {request.method} {request.url.path} in time "
                f"({type(exc).__name__}); {_CHECK_NETWORK}"
            ) from exc
        except httpx.TransportError as exc:
            hint = _CHECK_NETWORK
            if self.reference.plain_http is False and "SSL" in str(exc):
                hint = "check that it serves HTTPS with a certificate this server trusts"
            raise RegistryUnreachableError(
                f"cannot reach {host} for {self._repo} ({type(exc).__name__}: {exc}); {hint}"
            ) from exc

    async def _login(self, challenge: str) -> None:
        scheme, params = _parse_challenge(challenge)
        if scheme == "basic":
            if self._auth is None:
                raise RegistryAuthError(
                    f"registry {self._registry} requires a login to pull {self._repo}; "
                    "pass auth=(user, password)"
                )
            self._authorization = _basic(self._auth)
        elif scheme == "bearer":
            self._authorization = f"Bearer {await self._fetch_token(params)}"
        else:
            raise RegistryAuthError(
                f"registry {self._registry} asks for an unsupported login "
                f"({challenge or 'no WWW-Authenticate header'!r}); Stockade speaks Basic and "
                "Bearer token auth"
            )

    async def _fetch_token(self, params: Mapping[str, str]) -> str:
        realm = params.get("realm", "")
        parts = urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RegistryAuthError(
                f"registry {self._registry} names an invalid token service {realm!r}"
            )
        if (
            self._auth is not None
            and parts.scheme == "http"
            and not is_loopback_host(parts.hostname)
        ):
            # Docker would send the password in the clear here; refuse rather than leak it.
            raise RegistryAuthError(
                f"registry {self._registry} wants the password sent to {realm} over plain "
                "HTTP; refusing to send credentials unencrypted"
            )
        query = {"scope": params.get("scope") or f"repository:{self.reference.repository}:pull"}
        if params.get("service"):
            query["service"] = params["service"]
        headers = {"Authorization": _basic(self._auth)} if self._auth else {}
        request = self._http.build_request("GET", realm, params=query, headers=headers)
        resp = await self._send(request, stream=True)
        try:
            if resp.status_code in (401, 403):
                raise RegistryAuthError(
                    self._refused(f"the token service {realm} of registry {self._registry}")
                )
            if resp.status_code != 200:
                raise RegistryError(
                    f"the token service {realm} of registry {self._registry} answered HTTP "
                    f"{resp.status_code}: {await _error_text(resp)}"
                )
            body = await _read_capped(resp, 1024 * 1024, f"the token from {realm}")
        finally:
            await resp.aclose()
        try:
            data = json.loads(body)
            token = data.get("token") or data.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"the token service {realm} answered without a token")
        return token

    def _refused(self, who: str) -> str:
        if self._auth is None:
            return (
                f"{who} refused anonymous access to {self._repo}: the image is private or does "
                "not exist; pass auth=(user, password) if it is private"
            )
        return (
            f"{who} refused user {self._auth.username!r} for {self._repo}: check the user "
            "name and password (or token) passed as auth=(user, password)"
        )

    async def _check(self, resp: httpx.Response, what: str, *, manifest: bool) -> None:
        """Raise the Stockade error for a non-200 answer about ``what``."""
        status = resp.status_code
        if status == 200:
            return
        detail = await _error_text(resp)
        if status == 404:
            if manifest:
                raise ImageNotFoundError(
                    f"image {what} was not found ({detail}); check the repository name and tag"
                )
            raise RegistryError(f"registry {self._registry} is missing {what} ({detail})")
        if status in (401, 403):
            raise RegistryAuthError(self._refused(f"registry {self._registry}") + f" ({detail})")
        if status == 429:
            raise RegistryError(
                f"registry {self._registry} is rate-limiting pulls of {what} ({detail}); "
                "wait and retry, or log in with auth=(user, password) for a higher limit"
            )
        raise RegistryError(
            f"registry {self._registry} answered HTTP {status} for {what}: {detail}"
        )


# -- IO-free helpers ---------------------------------------------------------------------------


def _basic(auth: RegistryAuth) -> str:
    raw = f"{auth.username}:{auth.password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


_CHALLENGE_PARAM = re.compile(r'([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="…",service="…"`` as ("bearer", {"realm": …, "service": …})."""
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    for m in _CHALLENGE_PARAM.finditer(rest):
        quoted, bare = m.group(2), m.group(3)
        value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare or ""
        params[m.group(1).lower()] = value
    return scheme.lower(), params


def _sniff_media_type(body: bytes) -> str | None:
    """The media type of a manifest served without a useful Content-Type."""
    try:
        value = json.loads(body)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    if isinstance(value.get("mediaType"), str):
        return str(value["mediaType"])
    if value.get("schemaVersion") == 1:
        return "application/vnd.docker.distribution.manifest.v1+json"
    if "manifests" in value:
        return OCI_INDEX
    if "layers" in value:
        return OCI_MANIFEST
    return None


def _pick_platform(index: Mapping[str, Any], what: str) -> str:
    """The digest of the linux/amd64 (variant-less) manifest in an index."""
    entries = index.get("manifests")
    if not isinstance(entries, Sequence):
        raise RegistryError(f"the image index of {what} has no manifest list")
    seen: list[str] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            continue
        platform = entry.get("platform")
        if not isinstance(platform, Mapping):
            continue
        os_name, arch = platform.get("os"), platform.get("architecture")
        variant = platform.get("variant") or ""
        if (os_name, arch) == _PLATFORM and not variant:
            return Descriptor.parse(entry, f"entry {i} of the image index of {what}").digest
        if os_name != "unknown":  # BuildKit's attestation manifests say unknown/unknown
            seen.append("/".join(str(p) for p in (os_name, arch, variant) if p))
    found = ", ".join(dict.fromkeys(seen)) or "no platforms at all"
    raise UnsupportedImageError(
        f"{what} has no linux/amd64 image, which Stockade sandboxes need; it is built for: {found}"
    )


def _parse_manifest(raw: RawManifest, resolved: str, what: str) -> ImageManifest:
    data = raw.json()
    config = Descriptor.parse(data.get("config"), f"the config descriptor of {what}")
    if config.media_type not in CONFIG_MEDIA_TYPES:
        raise UnsupportedImageError(
            f"{what} is not a container image but an artifact of type "
            f"{config.media_type or 'unknown'!r}"
        )
    entries = data.get("layers")
    if not isinstance(entries, list):
        raise RegistryError(f"the manifest of {what} has no layer list")
    layers = tuple(Descriptor.parse(e, f"layer {i} of {what}") for i, e in enumerate(entries))
    for layer in layers:
        if layer.media_type not in LAYER_MEDIA_TYPES:
            raise UnsupportedImageError(
                f"{what} has a layer of unsupported type {layer.media_type!r}; Stockade reads "
                "tar layers, uncompressed or compressed with gzip or zstd"
            )
    return ImageManifest(raw.digest, resolved, raw.media_type, config, layers)


async def _read_capped(resp: httpx.Response, limit: int, what: str) -> bytes:
    chunks: list[bytes] = []
    total = 0
    try:
        async for chunk in resp.aiter_bytes():
            total += len(chunk)
            if total > limit:
                raise RegistryError(f"{what} is larger than {limit} bytes")
            chunks.append(chunk)
    except httpx.TransportError as exc:
        raise RegistryUnreachableError(
            f"the connection to {resp.url.host} broke while reading {what}: {exc}"
        ) from exc
    return b"".join(chunks)


async def _error_text(resp: httpx.Response) -> str:
    """The registry's own words for an error: its ``errors[].code: message``, else the status."""
    if resp.request.method == "HEAD":
        return f"HTTP {resp.status_code}"
    try:
        body = await _read_capped(resp, 64 * 1024, "the error body")
    except (RegistryError, RegistryUnreachableError):
        return f"HTTP {resp.status_code}"
    try:
        errors = json.loads(body).get("errors")
        texts = [f"{e.get('code')}: {e.get('message')}" for e in errors if isinstance(e, dict)]
        if texts:
            return "; ".join(texts)
    except (ValueError, AttributeError, TypeError):
        pass
    text = body.decode(errors="replace").strip()
    return f"HTTP {resp.status_code}" + (f": {text[:200]}" if text else "")
