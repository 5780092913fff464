"""``stockade serve``'s start: the banner says how to connect, and bad TLS files or a
plain-HTTP listener other machines reach are told apart from a good start."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest

from stockade.server import main


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What uvicorn would have been started with; nothing is served."""
    seen: dict[str, Any] = {}
    monkeypatch.setenv("STOCKADE_TOKEN", "t")
    for name in ("STOCKADE_TLS_CERT", "STOCKADE_TLS_KEY", "STOCKADE_TLS_SELF_SIGNED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("stockade.server.config.find_runsc", lambda cache: "/bin/true")
    monkeypatch.setattr(main, "_raise_file_limit", lambda: None)
    monkeypatch.setattr(main, "create_app", lambda config: "app")
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: seen.update(kw))
    return seen


def _run(tmp_path: Path, **kw: Any) -> None:
    main.run_server(data_dir=tmp_path / "d", cache_dir=tmp_path / "c", port=7000, **kw)


def test_self_signed_start_says_https_and_how_to_trust_it(
    tmp_path: Path, served: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    _run(tmp_path, tls_self_signed=True)
    out, err = capsys.readouterr()
    cert = tmp_path / "d" / "tls" / "cert.pem"
    assert "Stockade listening on https://127.0.0.1:7000" in out
    assert f"connect: export STOCKADE_URL=https://127.0.0.1:7000 STOCKADE_CA_BUNDLE={cert}" in out
    fingerprint = next(line for line in out.splitlines() if "SHA-256 fingerprint" in line)
    assert "made now: none was kept yet" in out
    assert err == ""
    factory = served["ssl_context_factory"]
    assert isinstance(factory(None, None), ssl.SSLContext)

    _run(tmp_path, tls_self_signed=True)  # a restart prints the same fingerprint
    out, _ = capsys.readouterr()
    assert fingerprint in out.splitlines()
    assert "made now" not in out


def test_a_bad_certificate_stops_the_start_with_one_line(
    tmp_path: Path, served: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("junk\n")
    with pytest.raises(SystemExit) as stopped:
        _run(tmp_path, tls_cert=junk, tls_key=junk)
    assert stopped.value.code == 2
    _, err = capsys.readouterr()
    assert err.startswith(f"error: --tls-cert {junk} holds no PEM certificate")
    assert "Traceback" not in err and err.count("\n") == 1
    assert served == {}


def test_plain_http_on_a_public_address_warns_on_stderr(
    tmp_path: Path, served: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    _run(tmp_path, host="0.0.0.0")
    out, err = capsys.readouterr()
    assert "connect: export STOCKADE_URL=http://0.0.0.0:7000" in out
    assert err.startswith("warning: serving plain HTTP on 0.0.0.0")
    assert "admin token" in err
    assert served["ssl_context_factory"] is None

    _run(tmp_path)  # loopback: nothing to warn about
    assert capsys.readouterr().err == ""
