"""Where the server is and how to authenticate: the one place that reads the environment.

Resolution order, first match wins:

- URL: the ``url=`` argument, then ``$STOCKADE_URL``, then ``http://127.0.0.1:7423``.
- Token: the ``token=`` argument, then ``$STOCKADE_TOKEN``, then the local server's token
  file ``<data dir>/token`` (data dir: ``$STOCKADE_DATA_DIR``, else ``/var/lib/stockade``).

The token file is read only when the URL points at this machine (loopback), so a
misconfigured ``STOCKADE_URL`` never sends the local server's token to another host.

- Certificates (an ``https://`` server): the ``verify=`` argument when it is ``False`` or a
  path, else ``$STOCKADE_CA_BUNDLE``, else the system's CA store. A bundle (a PEM file of
  certificates, or a directory of them as ``openssl rehash`` leaves it) is trusted on top
  of the system's CAs: a server's self-signed certificate, or a private CA.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from urllib.parse import urlsplit

from stockade.errors import AuthenticationError, InvalidArgumentError

DEFAULT_URL = "http://127.0.0.1:7423"
DEFAULT_DATA_DIR = Path("/var/lib/stockade")

URL_ENV = "STOCKADE_URL"
TOKEN_ENV = "STOCKADE_TOKEN"
DATA_DIR_ENV = "STOCKADE_DATA_DIR"
CA_BUNDLE_ENV = "STOCKADE_CA_BUNDLE"


def _env(name: str) -> str | None:
    # An exported-but-empty variable (`STOCKADE_TOKEN= cmd`) means "unset", as in most CLIs.
    value = os.environ.get(name, "").strip()
    return value or None


def resolve_url(url: str | None = None) -> str:
    """The server's base URL, without a trailing slash."""
    resolved = (url or "").strip() or _env(URL_ENV) or DEFAULT_URL
    parts = urlsplit(resolved)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidArgumentError(
            f"server URL {resolved!r} is not an http(s) URL; "
            f"set {URL_ENV} or pass url= like {DEFAULT_URL!r}"
        )
    return resolved.rstrip("/")


def resolve_verify(verify: bool | str | os.PathLike[str] = True) -> bool | str:
    """How to check an https server's certificate: ``False`` (not at all), ``True`` (the
    system's CAs) or the path of a CA bundle trusted as well.

    Raises :class:`InvalidArgumentError` when the bundle named does not exist.
    """
    if verify is False:
        return False
    if verify is True:
        configured = _env(CA_BUNDLE_ENV)
        if configured is None:
            return True
        path, source = Path(configured).expanduser(), f"{CA_BUNDLE_ENV}={configured}"
    elif isinstance(verify, str | os.PathLike):
        path, source = Path(verify).expanduser(), f"verify={os.fspath(verify)!r}"
    else:
        raise InvalidArgumentError(
            f"verify= takes True, False or the path of a CA bundle, not {verify!r}"
        )
    if not path.exists():
        raise InvalidArgumentError(
            f"{source}: no such file; point it at the server's certificate (a PEM file; a "
            "server started with --tls-self-signed prints its path) or the CA that signed it"
        )
    return str(path.resolve())


def data_dir() -> Path:
    """The local server's data directory, where its token file lives."""
    configured = _env(DATA_DIR_ENV)
    return Path(configured) if configured else DEFAULT_DATA_DIR


def token_file() -> Path:
    """The path of the token file that ``stockade serve`` writes."""
    return data_dir() / "token"


def is_local(url: str) -> bool:
    """Whether ``url`` points at this machine."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_token(token: str | None, url: str) -> str:
    """The bearer token for ``url``; raises :class:`AuthenticationError` naming the fixes."""
    if token and token.strip():
        return token.strip()
    from_env = _env(TOKEN_ENV)
    if from_env:
        return from_env
    path = token_file()
    if not is_local(url):
        raise AuthenticationError(
            f"no token for {url}: set {TOKEN_ENV} (or pass token=, or --token on the CLI); "
            f"the local token file {path} is only used for a server on this machine"
        )
    try:
        from_file = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        why = "does not exist (is `stockade serve` running with this data dir?)"
    except PermissionError:
        why = "is not readable by this user (the server runs as root; copy the token)"
    except OSError as exc:
        why = f"could not be read ({exc.strerror or exc})"
    else:
        if from_file:
            return from_file
        why = "is empty"
    raise AuthenticationError(
        f"no token for {url}: set {TOKEN_ENV} (or pass token=, or --token on the CLI), or "
        f"make the token file {path} readable; it {why}. {DATA_DIR_ENV} moves the data dir"
    )
