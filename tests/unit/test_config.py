"""URL, token and certificate-check resolution: arguments, environment, the local token file."""

from __future__ import annotations

from pathlib import Path

import pytest

from stockade import AuthenticationError, Client, InvalidArgumentError
from stockade._config import is_local, resolve_token, resolve_url, resolve_verify

LOCAL = "http://127.0.0.1:7423"


def test_url_order(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_url() == LOCAL
    monkeypatch.setenv("STOCKADE_URL", "http://sandbox-host:9000/")
    assert resolve_url() == "http://sandbox-host:9000"
    assert resolve_url("https://other:1") == "https://other:1"
    monkeypatch.setenv("STOCKADE_URL", "")
    assert resolve_url() == LOCAL


def test_bad_url(isolated_env: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="STOCKADE_URL"):
        resolve_url("127.0.0.1:7423")


def test_token_order(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolated_env.mkdir()
    (isolated_env / "token").write_text("from-file\n")
    assert resolve_token(None, LOCAL) == "from-file"
    monkeypatch.setenv("STOCKADE_TOKEN", "from-env")
    assert resolve_token(None, LOCAL) == "from-env"
    assert resolve_token("explicit", LOCAL) == "explicit"


def test_missing_token_names_the_fixes(isolated_env: Path) -> None:
    with pytest.raises(AuthenticationError) as info:
        resolve_token(None, LOCAL)
    message = str(info.value)
    assert "STOCKADE_TOKEN" in message
    assert str(isolated_env / "token") in message
    assert "does not exist" in message


def test_unreadable_token_file(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolated_env.mkdir()
    token = isolated_env / "token"
    token.write_text("secret")

    def denied(self: Path, *args: object, **kwargs: object) -> str:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(AuthenticationError, match="not readable by this user"):
        resolve_token(None, LOCAL)


def test_token_file_is_not_sent_to_other_hosts(isolated_env: Path) -> None:
    isolated_env.mkdir()
    (isolated_env / "token").write_text("local-secret")
    with pytest.raises(AuthenticationError, match="only used for a server on this machine"):
        resolve_token(None, "https://sandboxes.example.com")
    assert resolve_token(None, "http://localhost:7423") == "local-secret"
    assert resolve_token(None, "http://[::1]:7423") == "local-secret"


def test_is_local() -> None:
    assert is_local("http://127.0.0.2:1") and is_local("http://localhost")
    assert not is_local("http://10.0.0.1") and not is_local("http://example.com")


def test_client_resolves_eagerly(isolated_env: Path) -> None:
    with pytest.raises(AuthenticationError, match="STOCKADE_TOKEN"):
        Client()


def test_verify_order(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle, other = isolated_env.parent / "ca.pem", isolated_env.parent / "other.pem"
    bundle.write_text("x")
    other.write_text("x")
    assert resolve_verify() is True
    assert resolve_verify(False) is False
    assert resolve_verify(str(other)) == str(other)
    monkeypatch.setenv("STOCKADE_CA_BUNDLE", str(bundle))
    assert resolve_verify() == str(bundle)
    assert resolve_verify(True) == str(bundle)
    assert resolve_verify(other) == str(other)  # an explicit bundle wins, a PathLike too
    assert resolve_verify(False) is False  # and so does turning checks off
    monkeypatch.setenv("STOCKADE_CA_BUNDLE", " ")
    assert resolve_verify() is True  # exported but empty: unset


def test_a_missing_bundle_names_the_setting(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STOCKADE_CA_BUNDLE", "/nowhere/ca.pem")
    with pytest.raises(InvalidArgumentError, match=r"STOCKADE_CA_BUNDLE=/nowhere/ca.pem: no such"):
        resolve_verify()
    with pytest.raises(InvalidArgumentError, match=r"verify='/nowhere/x.pem': no such file"):
        resolve_verify("/nowhere/x.pem")
    with pytest.raises(InvalidArgumentError, match="verify= takes True, False or the path"):
        resolve_verify(1)  # type: ignore[arg-type]
