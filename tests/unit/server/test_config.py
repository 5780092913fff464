"""ServerConfig's TLS settings: flags, then STOCKADE_TLS_* variables, and the URL they give."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from stockade.server.config import ConfigError, ServerConfig


@pytest.fixture
def load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("STOCKADE_TOKEN", "t")
    monkeypatch.setattr("stockade.server.config.find_runsc", lambda cache: "/bin/true")
    for name in ("STOCKADE_TLS_CERT", "STOCKADE_TLS_KEY", "STOCKADE_TLS_SELF_SIGNED"):
        monkeypatch.delenv(name, raising=False)

    def load(**kw: Any) -> ServerConfig:
        return ServerConfig.load(data_dir=tmp_path / "d", cache_dir=tmp_path / "c", **kw)

    return load


def test_plain_http_by_default(load: Any) -> None:
    config = load(port=7000)
    assert config.tls is None
    assert config.url == "http://127.0.0.1:7000"


def test_self_signed_serves_https_from_the_data_dir(
    load: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load(host="::1", port=7000, tls_self_signed=True)
    assert config.url == "https://[::1]:7000"
    assert config.tls is not None and config.tls.cert == tmp_path / "d" / "tls" / "cert.pem"
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o700
    # The variable does the same, and a restart keeps the certificate.
    monkeypatch.setenv("STOCKADE_TLS_SELF_SIGNED", "1")
    again = load(host="::1", port=7000)
    assert again.tls is not None and again.tls.fingerprint == config.tls.fingerprint
    assert load(host="::1", tls_self_signed=False).tls is None  # the flag wins


def test_conflicting_or_half_settings_are_refused(load: Any, tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    with pytest.raises(ConfigError, match="drop --tls-cert/--tls-key"):
        load(tls_self_signed=True, tls_cert=cert)
    with pytest.raises(ConfigError, match="--tls-key needs the certificate"):
        load(tls_key=cert)
    with pytest.raises(ConfigError, match=r"--tls-cert .*cert\.pem: cannot read it"):
        load(tls_cert=cert, tls_key=cert)


def test_the_variables_name_the_files(
    load: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = load(tls_self_signed=True).tls
    monkeypatch.setenv("STOCKADE_TLS_CERT", str(made.cert))
    monkeypatch.setenv("STOCKADE_TLS_KEY", str(made.key))
    config = load(port=7001)
    assert config.url == "https://127.0.0.1:7001"
    assert config.tls is not None and config.tls.fingerprint == made.fingerprint
