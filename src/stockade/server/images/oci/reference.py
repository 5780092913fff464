"""Image references (``python:3.12-slim``, ``ghcr.io/o/app@sha256:…``) parsed as Docker does.

Users paste references from Docker Hub, docker-compose files and CI logs, so the rules are
Docker's own (distribution/reference), not a simplification of them:

- the first path component is a registry only if it has a ``.`` or a ``:``, is ``localhost``,
  or has an uppercase letter; otherwise the registry is Docker Hub, whose API lives at
  ``registry-1.docker.io`` and whose one-component names live under ``library/``;
- repository components are lowercase, joined by ``.``, ``_``, ``__`` or runs of ``-``;
- a tag is ``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``; with neither tag nor digest the tag is
  ``latest``; with a digest the digest decides what is pulled and the tag is informative.

Plain HTTP is allowed only for loopback registries, the same exception Docker makes without an
``insecure-registries`` setting: anything that crosses a network gets TLS.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from ....errors import InvalidArgumentError

__all__ = ["DOCKER_HUB", "Reference", "is_loopback_host", "is_valid_tag", "parse_reference"]

DOCKER_HUB = "registry-1.docker.io"
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", DOCKER_HUB})

_EXAMPLE = (
    "write it like 'python:3.12-slim', 'ghcr.io/owner/app:v1' "
    "or 'localhost:5000/app@sha256:<64 hex digits>'"
)

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DOMAIN_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(
    rf"(?:{_DOMAIN_LABEL}(?:\.{_DOMAIN_LABEL})*|\[[a-fA-F0-9:]+\])(?::[0-9]{{1,5}})?"
)
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}")
_MAX_NAME = 255  # Docker's limit on "registry/repository"


@dataclass(frozen=True)
class Reference:
    """One parsed image reference; ``str()`` gives its fully qualified form.

    Example::

        >>> ref = parse_reference("python:3.12-slim")
        >>> (ref.registry, ref.repository, ref.tag)
        ('registry-1.docker.io', 'library/python', '3.12-slim')
    """

    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def plain_http(self) -> bool:
        """True for loopback registries, which are spoken to over HTTP instead of HTTPS."""
        return is_loopback_host(_host_of(self.registry))

    @property
    def base_url(self) -> str:
        return f"{'http' if self.plain_http else 'https'}://{self.registry}"

    @property
    def manifest_ref(self) -> str:
        """What to ask the registry for: the digest when there is one, else the tag."""
        ref = self.digest or self.tag
        assert ref is not None  # parse_reference always sets one of them
        return ref

    @property
    def name(self) -> str:
        """``registry/repository``, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_reference(text: str) -> Reference:
    """Parse an image reference; raise InvalidArgumentError naming what is wrong.

    Example::

        >>> str(parse_reference("localhost:5000/team/app"))
        'localhost:5000/team/app:latest'
    """

    def bad(why: str) -> InvalidArgumentError:
        return InvalidArgumentError(f"invalid image reference {text!r}: {why}; {_EXAMPLE}")

    if not text:
        raise bad("it is empty")
    if text != text.strip() or any(c.isspace() for c in text):
        raise bad("it contains whitespace")

    name, at, digest = text.partition("@")
    if at and not _DIGEST.fullmatch(digest):
        raise bad("a digest is 'sha256:' followed by 64 lowercase hex digits")

    tag: str | None = None
    colon = name.rfind(":")
    if colon > name.rfind("/"):  # a colon before the last slash belongs to a registry port
        name, tag = name[:colon], name[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise bad(
                f"tag {tag!r} may use only letters, digits, '_', '.' and '-', "
                "must not start with '.' or '-', and is at most 128 characters"
            )

    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        registry, repository = first, rest
        if not _DOMAIN.fullmatch(registry):
            raise bad(f"{registry!r} is not a valid registry host[:port]")
    else:
        registry, repository = DOCKER_HUB, name
    if registry in _HUB_ALIASES:
        registry = DOCKER_HUB
        if repository and "/" not in repository:
            repository = f"library/{repository}"  # Docker Hub's official images

    if not repository:
        raise bad("the repository name is missing")
    for component in repository.split("/"):
        if not _COMPONENT.fullmatch(component):
            if component != component.lower():
                raise bad("repository names must be lowercase")
            raise bad(
                f"repository component {component!r} must be lowercase letters and digits, "
                "separated by '.', '_', '__' or '-'"
            )
    if len(f"{registry}/{repository}") > _MAX_NAME:
        raise bad(f"the name is longer than {_MAX_NAME} characters")

    if tag is None and not at:
        tag = "latest"
    return Reference(registry, repository, tag, digest if at else None)


def _host_of(registry: str) -> str:
    if registry.startswith("["):
        return registry[1 : registry.index("]")]
    return registry.rsplit(":", 1)[0]


def is_valid_tag(tag: str) -> bool:
    """Whether ``tag`` is a valid Docker/OCI tag (``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``)."""
    return _TAG.fullmatch(tag) is not None


def is_loopback_host(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ::1: hosts that plain HTTP may be spoken to."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
