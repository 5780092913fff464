"""``stockade serve``: configure logging, load the config and run uvicorn."""

from __future__ import annotations

import logging
import resource
import sys
from pathlib import Path

import uvicorn

from ..errors import InvalidArgumentError
from .app import create_app
from .config import ConfigError, ServerConfig
from .network.dns import parse_upstream
from .service.pools import parse_pool_specs

__all__ = ["run_server"]

# Open files the server wants: each live sandbox holds its agent's two FIFOs and its
# clients' sockets, and a soft limit of 1024 (a common default) caps a host below 300.
_WANTED_FILES = 65536


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
    doze_after: float | None = None,
    max_log_bytes: int | None = None,
) -> None:
    """Run the server in the foreground until SIGINT/SIGTERM. Sandboxes outlive it."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = ServerConfig.load(
            data_dir=data_dir, cache_dir=cache_dir, host=host, port=port, pools=pools,
            network=network, dns_upstreams=dns_upstreams, tunnel_domain=tunnel_domain,
            code_output_limit=code_output_limit, retention=retention,
            doze_after=doze_after, max_log_bytes=max_log_bytes,
        )  # fmt: skip
        parse_pool_specs(config.pools)
        for upstream in config.dns_upstreams:
            parse_upstream(upstream)
    except (ConfigError, InvalidArgumentError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    _raise_file_limit()
    print(f"Stockade listening on {config.url}", flush=True)
    print(f"  data: {config.data_dir}   cache: {config.cache_dir}   runsc: {config.runsc}")
    print(f"  token: {config.token_source}")
    if config.pools:
        print(f"  warm pools: {config.pools}")
    print(f"  connect: export STOCKADE_URL={config.url}"
          + ("" if "STOCKADE_TOKEN" in config.token_source
             else f" STOCKADE_TOKEN=$(cat {config.token_source})"), flush=True)  # fmt: skip
    uvicorn.run(
        create_app(config),
        host=host,
        port=port,
        log_level="info",
        ws_max_size=16 * 1024 * 1024,
        timeout_graceful_shutdown=5,
    )
