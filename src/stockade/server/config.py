"""Server settings: where things live and which runsc to use.

Precedence: command-line flags, then environment variables, then the embedded defaults.
"""

from __future__ import annotations

import math
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from .runtime.output_log import DEFAULT_MAX_LOG_BYTES, MIN_MAX_LOG_BYTES
from .runtime.runsc import MIN_RUNSC_VERSION, runsc_version
from .tls import TlsError, TlsFiles, load_pair, self_signed

__all__ = ["DEFAULT_CACHE_DIR", "DEFAULT_DATA_DIR", "DEFAULT_PORT", "ServerConfig", "find_runsc"]

DEFAULT_DATA_DIR = Path("/var/lib/stockade")
DEFAULT_CACHE_DIR = Path("/var/cache/stockade")
DEFAULT_PORT = 7423
DEFAULT_RETENTION = 7 * 86400.0  # a week
DEFAULT_DOZE_AFTER = 10.0
DEFAULT_AUDIT_RETENTION = 90 * 86400.0  # three months


class ConfigError(Exception):
    """The server cannot start with this configuration; the message says what to do."""


def find_runsc(cache_dir: Path) -> str:
    """``$STOCKADE_RUNSC``, else the cache's runsc, else a new enough runsc on PATH."""
    explicit = os.environ.get("STOCKADE_RUNSC")
    candidates = [explicit] if explicit else []
    candidates += [str(cache_dir / "bin" / "runsc"), shutil.which("runsc") or ""]
    for c in candidates:
        if c and os.access(c, os.X_OK):
            version = runsc_version(c)
            if version is not None and version >= MIN_RUNSC_VERSION:
                return c
            if explicit and c == explicit:
                raise ConfigError(
                    f"STOCKADE_RUNSC={c} is version {version}; Stockade needs a runsc from "
                    f"{MIN_RUNSC_VERSION // 10000} or newer (run `make run` to fetch one)"
                )
    raise ConfigError(
        f"no runsc from {MIN_RUNSC_VERSION // 10000} or newer found (looked at $STOCKADE_RUNSC, "
        f"{cache_dir / 'bin' / 'runsc'} and PATH); `make run` installs one"
    )


@dataclass
class ServerConfig:
    data_dir: Path
    cache_dir: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    runsc: str = ""
    token: str = ""
    token_source: str = ""
    pools: str = ""  # "python=4,debian=2": warm pools to keep (see service/pools.py)
    network: bool = True  # per-sandbox networking; off: every sandbox gets loopback only
    dns_upstreams: tuple[str, ...] = ()  # resolvers for sandboxes; empty: /etc/resolv.conf
    # Host-based tunnel URLs `https://{port}-{id}.<domain>` (a wildcard DNS name pointing at
    # this server); empty: path-based `<server>/proxy/{id}/{port}/`.
    tunnel_domain: str = ""
    # Image builds: the names their steps may reach (empty: the Debian mirror and PyPI) and
    # the pip index they use (empty: pip's default).
    build_allow_domains: tuple[str, ...] = ()
    pip_index_url: str = ""
    # The most output one run_code may return (bytes); the rest is dropped with a marker.
    code_output_limit: int = 16 * 1024 * 1024
    # How long ended sandboxes' records and logs are kept (seconds; 0: forever).
    retention: float = DEFAULT_RETENTION
    # Seconds without API use after which a sandbox dozes (service/doze.py; 0: never).
    doze_after: float = DEFAULT_DOZE_AFTER
    # Bytes of each sandbox's output (output.log) kept on disk; past it the older half
    # goes (runtime/output_log.py).
    max_log_bytes: int = DEFAULT_MAX_LOG_BYTES
    # The certificate HTTPS and WSS are served with (tls.py); None: plain HTTP.
    tls: TlsFiles | None = None
    # How long audit log entries are kept (seconds; 0: forever); off: none are recorded.
    audit_retention: float = DEFAULT_AUDIT_RETENTION
    audit: bool = True

    @classmethod
    def load(
        cls,
        *,
        data_dir: Path | None = None,
        cache_dir: Path | None = None,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        pools: str | None = None,
        network: bool | None = None,
        dns_upstreams: tuple[str, ...] | None = None,
        tunnel_domain: str | None = None,
        code_output_limit: int | None = None,
        retention: float | None = None,
        doze_after: float | None = None,
        max_log_bytes: int | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        tls_self_signed: bool | None = None,
        audit_retention: float | None = None,
        audit: bool | None = None,
    ) -> ServerConfig:
        data = data_dir or Path(os.environ.get("STOCKADE_DATA_DIR") or DEFAULT_DATA_DIR)
        cache = cache_dir or Path(os.environ.get("STOCKADE_CACHE_DIR") or DEFAULT_CACHE_DIR)
        data, cache = data.resolve(), cache.resolve()
        # Both hold what sandboxes wrote (setuid files, device nodes, other users' files)
        # and the data directory holds every secret: no other host user may even look in.
        # Set on every start, so that directories made by an older server are closed too.
        for directory in (data, cache):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(directory, 0o700)
        cfg = cls(data_dir=data, cache_dir=cache, host=host, port=port)
        cfg.pools = pools if pools is not None else os.environ.get("STOCKADE_POOLS", "")
        env_network = os.environ.get("STOCKADE_NETWORK", "1").strip().lower()
        cfg.network = (
            network if network is not None else env_network not in ("0", "false", "no", "off")
        )
        env_dns = os.environ.get("STOCKADE_DNS_UPSTREAM", "")
        cfg.dns_upstreams = dns_upstreams or tuple(u for u in env_dns.split(",") if u.strip())
        env_allow = os.environ.get("STOCKADE_BUILD_ALLOW_DOMAINS", "")
        cfg.build_allow_domains = tuple(d.strip() for d in env_allow.split(",") if d.strip())
        cfg.pip_index_url = os.environ.get("STOCKADE_PIP_INDEX_URL", "").strip()
        cfg.tunnel_domain = (
            tunnel_domain
            if tunnel_domain is not None
            else os.environ.get("STOCKADE_TUNNEL_DOMAIN", "")
        ).strip(".")
        env_limit = os.environ.get("STOCKADE_CODE_OUTPUT_LIMIT", "").strip()
        if code_output_limit is not None:
            cfg.code_output_limit = code_output_limit
        elif env_limit:
            try:
                cfg.code_output_limit = int(env_limit)
            except ValueError:
                raise ConfigError(
                    f"STOCKADE_CODE_OUTPUT_LIMIT={env_limit!r} is not a number of bytes"
                ) from None
        if cfg.code_output_limit < 1024:
            raise ConfigError("the code output limit must be at least 1024 bytes")
        cfg.retention = _seconds(
            retention, "--retention", "STOCKADE_RETENTION", DEFAULT_RETENTION,
            "0 keeps ended sandboxes forever",
        )  # fmt: skip
        cfg.doze_after = _seconds(
            doze_after, "--doze-after", "STOCKADE_DOZE_AFTER", DEFAULT_DOZE_AFTER,
            "0: sandboxes never doze",
        )  # fmt: skip
        cfg.audit_retention = _seconds(
            audit_retention, "--audit-retention", "STOCKADE_AUDIT_RETENTION",
            DEFAULT_AUDIT_RETENTION, "0 keeps the audit log forever",
        )  # fmt: skip
        env_audit = os.environ.get("STOCKADE_AUDIT", "1").strip().lower()
        cfg.audit = audit if audit is not None else env_audit not in ("0", "false", "no", "off")
        cfg.max_log_bytes = _max_log_bytes(max_log_bytes)
        cfg.tls = _tls(data, host, cfg.tunnel_domain, tls_cert, tls_key, tls_self_signed)
        cfg.runsc = find_runsc(cache)
        cfg.token, cfg.token_source = _admin_token(data)
        return cfg

    @property
    def sandboxes_dir(self) -> Path:
        return self.data_dir / "sandboxes"

    @property
    def spares_dir(self) -> Path:
        """Disks made ahead for sandboxes to come (service/boot_reserve.py)."""
        return self.data_dir / "spares"

    @property
    def snapshots_dir(self) -> Path:
        return self.data_dir / "snapshots"

    @property
    def volumes_dir(self) -> Path:
        return self.data_dir / "volumes"

    def volume_mount(self, volume_id: str) -> Path:
        """The host directory a volume's files live in (its mounted disk); sandboxes bind it."""
        return self.volumes_dir / volume_id / "mnt"

    @property
    def runsc_root(self) -> Path:
        return self.data_dir / "runsc"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "state.db"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"


def _seconds(flag: float | None, flag_name: str, env: str, default: float, zero: str) -> float:
    """A duration setting: its flag, else its environment variable, else ``default``."""
    if flag is not None:
        value, source = flag, f"{flag_name} {flag:g}"
    else:
        raw = os.environ.get(env, "").strip()
        if not raw:
            return default
        source = f"{env}={raw!r}"
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"{source} is not a number of seconds >= 0 ({zero})")
    return value


def _max_log_bytes(flag: int | None) -> int:
    """``--max-log-bytes``, else ``$STOCKADE_MAX_LOG_BYTES``, else the default."""
    if flag is not None:
        value, source = flag, f"--max-log-bytes {flag}"
    else:
        raw = os.environ.get("STOCKADE_MAX_LOG_BYTES", "").strip()
        if not raw:
            return DEFAULT_MAX_LOG_BYTES
        source = f"STOCKADE_MAX_LOG_BYTES={raw!r}"
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{source} is not a number of bytes") from None
    if value < MIN_MAX_LOG_BYTES:
        raise ConfigError(f"{source}: the log cap must be at least {MIN_MAX_LOG_BYTES} bytes")
    return value


def _tls(
    data_dir: Path,
    host: str,
    tunnel_domain: str,
    cert: Path | None,
    key: Path | None,
    self_signed_flag: bool | None,
) -> TlsFiles | None:
    """The certificate to serve: ``--tls-cert``/``--tls-key`` (else ``$STOCKADE_TLS_CERT``/
    ``$STOCKADE_TLS_KEY``), or with ``--tls-self-signed`` (``$STOCKADE_TLS_SELF_SIGNED=1``)
    the one kept in ``<data dir>/tls``; None: plain HTTP."""
    env_cert = os.environ.get("STOCKADE_TLS_CERT", "").strip()
    env_key = os.environ.get("STOCKADE_TLS_KEY", "").strip()
    cert = cert or (Path(env_cert) if env_cert else None)
    key = key or (Path(env_key) if env_key else None)
    if self_signed_flag is None:
        env_self = os.environ.get("STOCKADE_TLS_SELF_SIGNED", "").strip().lower()
        self_signed_flag = env_self not in ("", "0", "false", "no", "off")
    try:
        if self_signed_flag:
            if cert or key:
                raise ConfigError(
                    "--tls-self-signed makes its own certificate: drop --tls-cert/--tls-key "
                    "(or their STOCKADE_TLS_* variables), or drop --tls-self-signed"
                )
            return self_signed(data_dir / "tls", host, tunnel_domain)
        if key and not cert:
            raise ConfigError("--tls-key needs the certificate it belongs to: add --tls-cert")
        return load_pair(cert, key) if cert else None
    except TlsError as exc:
        raise ConfigError(str(exc)) from None


def _admin_token(data_dir: Path) -> tuple[str, str]:
    """The admin token: ``$STOCKADE_TOKEN``, else the one stored in ``<data-dir>/token``."""
    env = os.environ.get("STOCKADE_TOKEN")
    if env:
        return env, "the STOCKADE_TOKEN environment variable"
    path = data_dir / "token"
    if path.exists():
        token = path.read_text().strip()
        if token:
            return token, str(path)
    token = "sk_" + secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.chmod(path, 0o600)
    return token, str(path)
