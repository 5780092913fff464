"""``stockade serve``: run the server in the foreground (needs the ``server`` extra)."""

from __future__ import annotations

from pathlib import Path

import click

from stockade.cli._common import fail

# Top-level modules the `server` extra installs; a missing one means the extra is missing.
_SERVER_DEPENDENCIES = {
    "fastapi", "starlette", "pydantic", "pydantic_core", "uvicorn", "cryptography",
}  # fmt: skip


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=7423, show_default=True, type=int, help="Port to listen on.")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="State, sandboxes and the token [env: STOCKADE_DATA_DIR; default: /var/lib/stockade].",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Shared cache of built base images "
    "[env: STOCKADE_CACHE_DIR; default: /var/cache/stockade].",
)
@click.option(
    "--pool",
    "pools",
    multiple=True,
    metavar="IMAGE=COUNT",
    help="Keep COUNT sandboxes of IMAGE started, for instant creates (repeatable) "
    "[env: STOCKADE_POOLS, e.g. python=4,debian=2].",
)
@click.option(
    "--no-network",
    is_flag=True,
    help="Give every sandbox loopback only [env: STOCKADE_NETWORK=0].",
)
@click.option(
    "--dns-upstream",
    "dns_upstreams",
    multiple=True,
    metavar="IP[:PORT]",
    help="Resolver the sandboxes' DNS is forwarded to (repeatable) "
    "[env: STOCKADE_DNS_UPSTREAM; default: the host's /etc/resolv.conf].",
)
@click.option(
    "--tunnel-domain",
    default=None,
    metavar="DOMAIN",
    help="Serve exposed ports at http(s)://PORT-ID.DOMAIN (a wildcard DNS name for this server) "
    "[env: STOCKADE_TUNNEL_DOMAIN; default: path URLs /proxy/ID/PORT/].",
)
@click.option(
    "--max-code-output-bytes",
    "code_output_limit",
    type=click.IntRange(min=1024),
    default=None,
    metavar="BYTES",
    help="The most output one run_code returns; the rest is dropped with a marker "
    "[env: STOCKADE_CODE_OUTPUT_LIMIT; default: 16 MiB].",
)
# Its name before sizes said their unit; still taken, no longer shown.
@click.option(
    "--code-output-limit", "legacy_code_output_limit", type=click.IntRange(min=1024),
    default=None, hidden=True,
)  # fmt: skip
@click.option(
    "--retention",
    type=click.FloatRange(min=0),
    default=None,
    metavar="SECONDS",
    help="How long ended sandboxes' records and logs are kept; 0 keeps them forever "
    "[env: STOCKADE_RETENTION; default: 604800, a week].",
)
@click.option(
    "--audit-retention",
    type=click.FloatRange(min=0),
    default=None,
    metavar="SECONDS",
    help="How long audit log entries are kept; 0 keeps them forever "
    "[env: STOCKADE_AUDIT_RETENTION; default: 7776000, ninety days].",
)
@click.option(
    "--no-audit",
    is_flag=True,
    default=False,
    help="Keep no audit log of calls and execs (what is recorded stays readable) "
    "[env: STOCKADE_AUDIT=0].",
)
@click.option(
    "--doze-after",
    type=click.FloatRange(min=0),
    default=None,
    metavar="SECONDS",
    help="Seconds without API use after which a sandbox dozes: its timers may fire up to "
    "50 ms late, which makes an idle sandbox cost far less CPU; 0 never dozes "
    "[env: STOCKADE_DOZE_AFTER; default: 10].",
)
@click.option(
    "--max-log-bytes",
    type=click.IntRange(min=65536),
    default=None,
    metavar="BYTES",
    help="The most of each sandbox's output (its logs) kept on disk; past it the older "
    "half is dropped [env: STOCKADE_MAX_LOG_BYTES; default: 10 MiB].",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    metavar="FILE",
    help="Serve HTTPS and WSS with this PEM certificate (chain) [env: STOCKADE_TLS_CERT].",
)
@click.option(
    "--tls-key",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    metavar="FILE",
    help="The certificate's PEM private key, unencrypted; may be left out when the "
    "--tls-cert file holds it [env: STOCKADE_TLS_KEY].",
)
@click.option(
    "--tls-self-signed",
    is_flag=True,
    default=None,
    help="Serve HTTPS and WSS with a self-signed certificate made once and kept in the data "
    "directory; clients trust it with STOCKADE_CA_BUNDLE [env: STOCKADE_TLS_SELF_SIGNED=1].",
)
def serve(
    host: str,
    port: int,
    data_dir: Path | None,
    cache_dir: Path | None,
    pools: tuple[str, ...],
    no_network: bool,
    dns_upstreams: tuple[str, ...],
    tunnel_domain: str | None,
    code_output_limit: int | None,
    legacy_code_output_limit: int | None,
    retention: float | None,
    audit_retention: float | None,
    no_audit: bool,
    doze_after: float | None,
    max_log_bytes: int | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_self_signed: bool | None,
) -> None:
    """Run the Stockade server in the foreground (as root).

    Stops on Ctrl-C; running sandboxes outlive it.
    """
    try:
        # Imported here: the SDK and the other verbs must work without the server's packages.
        from stockade.server.main import run_server
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in _SERVER_DEPENDENCIES:
            raise
        fail(
            f"the server needs packages that are not installed ({exc.name} is missing); "
            "install them with: pip install 'stockade[server]'"
        )
    run_server(
        host=host,
        port=port,
        data_dir=data_dir,
        cache_dir=cache_dir,
        pools=",".join(pools) if pools else None,
        network=False if no_network else None,
        dns_upstreams=dns_upstreams,
        tunnel_domain=tunnel_domain,
        code_output_limit=(
            code_output_limit if code_output_limit is not None else legacy_code_output_limit
        ),
        retention=retention,
        audit_retention=audit_retention,
        audit=False if no_audit else None,
        doze_after=doze_after,
        max_log_bytes=max_log_bytes,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_self_signed=tls_self_signed,
    )
