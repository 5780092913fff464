"""``stockade serve``: configure logging, load the config and run uvicorn."""

from __future__ import annotations

import logging
import resource
import ssl
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import uvicorn

from ..errors import InvalidArgumentError
from .app import create_app
from .config import ConfigError, ServerConfig
from .network.dns import parse_upstream
from .service.pools import parse_pool_specs
from .tls import TlsError, TlsFiles, plain_http_warning

__all__ = ["SignedUrlRedactor", "install_log_filters", "run_server"]

_ContextFactory = Callable[[uvicorn.Config, Callable[[], ssl.SSLContext]], ssl.SSLContext]

# Open files the server wants: each live sandbox holds its agent's two FIFOs and its
# clients' sockets, and a soft limit of 1024 (a common default) caps a host below 300.
_WANTED_FILES = 65536


class SignedUrlRedactor(logging.Filter):
    """Drops the query of signed file URLs (``/v1/signed/…?…&sig=…``) from uvicorn's access
    log: the signature is the URL's only credential, and a log line holding it would be a
    working URL for whoever reads the log. The path stays, so the request is still seen."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(_signed(a) for a in record.args):
            record.args = tuple(_redacted(a) if _signed(a) else a for a in record.args)
        return True


_SIGNED_PATH = "/v1/signed/"


def _signed(arg: object) -> bool:
    return isinstance(arg, str) and "?" in arg and _SIGNED_PATH in arg.partition("?")[0]


def _redacted(target: object) -> str:
    return f"{str(target).partition('?')[0]}?[redacted]"


def install_log_filters() -> None:
    """Put the server's filters on uvicorn's loggers (they outlive uvicorn's own logging
    setup, which keeps a logger's filters)."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, SignedUrlRedactor) for f in access.filters):
        access.addFilter(SignedUrlRedactor())


def _raise_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < _WANTED_FILES:
        try:  # root may raise the hard limit too
            resource.setrlimit(resource.RLIMIT_NOFILE, (_WANTED_FILES, _WANTED_FILES))
            return
        except (ValueError, OSError):
            pass
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run_server(
    *,
    host: str = "127.0.0.1",
    port: int = 7423,
    data_dir: Path | None = None,
    cache_dir: Path | None = None,
    pools: str | None = None,
    network: bool | None = None,
    dns_upstreams: tuple[str, ...] = (),
    tunnel_domain: str | None = None,
    code_output_limit: int | None = None,
    retention: float | None = None,
    audit_retention: float | None = None,
    audit: bool | None = None,
    doze_after: float | None = None,
    max_log_bytes: int | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    tls_self_signed: bool | None = None,
) -> None:
    """Run the server in the foreground until SIGINT/SIGTERM. Sandboxes outlive it."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    install_log_filters()
    try:
        config = ServerConfig.load(
            data_dir=data_dir, cache_dir=cache_dir, host=host, port=port, pools=pools,
            network=network, dns_upstreams=dns_upstreams, tunnel_domain=tunnel_domain,
            code_output_limit=code_output_limit, retention=retention,
            audit_retention=audit_retention, audit=audit, doze_after=doze_after,
            max_log_bytes=max_log_bytes, tls_cert=tls_cert, tls_key=tls_key,
            tls_self_signed=tls_self_signed,
        )  # fmt: skip
        parse_pool_specs(config.pools)
        for upstream in config.dns_upstreams:
            parse_upstream(upstream)
        ssl_context = config.tls.context() if config.tls else None
    except (ConfigError, TlsError, InvalidArgumentError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    _raise_file_limit()
    print(f"Stockade listening on {config.url}", flush=True)
    print(f"  data: {config.data_dir}   cache: {config.cache_dir}   runsc: {config.runsc}")
    print(f"  token: {config.token_source}")
    if config.tls:
        _print_tls(config.tls)
    else:
        warning = plain_http_warning(config.host)
        if warning:
            print(f"warning: {warning}", file=sys.stderr, flush=True)
    if config.pools:
        print(f"  warm pools: {config.pools}")
    # A self-signed certificate is trusted by naming it; a CA-signed one needs nothing.
    trust = ""
    if config.tls and config.tls.self_signed:
        trust = f" STOCKADE_CA_BUNDLE={config.tls.cert}"
    print(f"  connect: export STOCKADE_URL={config.url}{trust}"
          + ("" if "STOCKADE_TOKEN" in config.token_source
             else f" STOCKADE_TOKEN=$(cat {config.token_source})"), flush=True)  # fmt: skip
    uvicorn.run(
        create_app(config),
        host=host,
        port=port,
        log_level="info",
        ws_max_size=16 * 1024 * 1024,
        timeout_graceful_shutdown=5,
        # Built and checked above: uvicorn's own loader would fail later, with a traceback.
        ssl_context_factory=_serving(ssl_context) if ssl_context else None,
    )


def _serving(context: ssl.SSLContext) -> _ContextFactory:
    """The uvicorn ``ssl_context_factory`` that serves ``context``."""

    def factory(_config: uvicorn.Config, _default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        return context

    return factory


def _print_tls(tls: TlsFiles) -> None:
    """The certificate's lines of the startup banner: what it is and how clients trust it."""
    kind = "self-signed certificate" if tls.self_signed else "certificate"
    print(f"  tls: {kind} {tls.cert}" + (f" (made now: {tls.made})" if tls.made else ""))
    print(f"       SHA-256 fingerprint {tls.fingerprint}")
    print(f"       valid for {', '.join(tls.names)} until {tls.not_after:%Y-%m-%d}")
    if tls.self_signed:
        print(f"       clients trust it with STOCKADE_CA_BUNDLE={tls.cert} (or a copy of it)")
    if tls.not_after <= datetime.now(UTC):
        print(f"warning: the certificate {tls.cert} expired on {tls.not_after:%Y-%m-%d}; "
              "clients will refuse it", file=sys.stderr)  # fmt: skip
