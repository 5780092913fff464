"""The server's certificate: checked when given, made once and kept when self-signed, and
accepted by a strict TLS client for every name it claims."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from stockade.server import tls
from stockade.server.tls import TlsError, load_pair, plain_http_warning, self_signed


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _handshake(files: tls.TlsFiles, name: str, cafile: Path) -> str:
    """A TLS handshake over a socket pair; returns the version, or raises the client's error."""
    client = ssl.create_default_context(cafile=str(cafile))
    # Python 3.13 turns this on by default; the certificate must pass it either way.
    client.verify_flags |= ssl.VERIFY_X509_STRICT
    server_side, client_side = socket.socketpair()
    server_context = files.context()

    def serve() -> None:
        try:
            server_context.wrap_socket(server_side, server_side=True).close()
        except (ssl.SSLError, OSError):
            server_side.close()  # the client refused the certificate

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client.wrap_socket(client_side, server_hostname=name) as conn:
            return str(conn.version())
    finally:
        thread.join(timeout=10)


def test_a_self_signed_certificate_is_made_once_and_kept(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    made = self_signed(data / "tls", "127.0.0.1")
    assert made.made == "none was kept yet" and made.self_signed
    assert made.cert == data / "tls" / "cert.pem" and made.key == data / "tls" / "key.pem"
    assert {"localhost", "127.0.0.1", "::1"} <= set(made.names)
    assert len(made.fingerprint.split(":")) == 32  # SHA-256, as openssl prints it

    kept = self_signed(data / "tls", "127.0.0.1")
    assert kept.made == ""
    assert kept.fingerprint == made.fingerprint
    assert kept.cert.read_bytes() == made.cert.read_bytes()
    # The private key and the directory holding it are the server's alone.
    assert _mode(data / "tls" / "key.pem") == 0o600
    assert _mode(data / "tls") == 0o700
    assert _mode(data) == 0o700


def test_the_certificate_is_valid_for_every_name_it_claims(tmp_path: Path) -> None:
    files = self_signed(tmp_path / "tls", "0.0.0.0", tunnel_domain="sb.example")
    hostname = socket.gethostname().lower()
    assert {hostname, "0.0.0.0", "sb.example", "*.sb.example"} <= set(files.names)
    for name in ("localhost", "127.0.0.1", "::1", hostname, "8080-sb-0123.sb.example"):
        assert _handshake(files, name, files.cert).startswith("TLSv1.")
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        _handshake(files, "elsewhere.example", files.cert)


def test_a_new_host_gets_a_new_certificate_that_keeps_the_old_names(tmp_path: Path) -> None:
    first = self_signed(tmp_path / "tls", "127.0.0.1")
    moved = self_signed(tmp_path / "tls", "10.1.2.3")
    assert moved.fingerprint != first.fingerprint
    assert moved.made == "the kept one does not cover 10.1.2.3"
    assert set(first.names) < set(moved.names)
    assert self_signed(tmp_path / "tls", "127.0.0.1").fingerprint == moved.fingerprint


def test_a_certificate_near_its_end_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tls, "_VALIDITY", dt.timedelta(days=10))
    short = self_signed(tmp_path / "tls", "127.0.0.1")
    monkeypatch.undo()
    renewed = self_signed(tmp_path / "tls", "127.0.0.1")
    assert renewed.made.startswith("the kept one expires on ")
    assert renewed.fingerprint != short.fingerprint
    assert renewed.not_after - dt.datetime.now(dt.UTC) > dt.timedelta(days=800)


def test_a_damaged_kept_pair_is_made_again(tmp_path: Path) -> None:
    first = self_signed(tmp_path / "tls", "127.0.0.1")
    (tmp_path / "tls" / "key.pem").write_bytes(_pem_key())  # a crash between the renames
    again = self_signed(tmp_path / "tls", "127.0.0.1")
    assert "is not the key of the certificate" in again.made
    assert again.fingerprint != first.fingerprint
    assert _mode(tmp_path / "tls" / "key.pem") == 0o600


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def test_a_given_pair_is_checked_and_served(tmp_path: Path, ca: trustme.CA) -> None:
    leaf = ca.issue_cert("stockade.example", "127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    files = load_pair(cert, key)
    assert not files.self_signed and files.made == ""
    assert set(files.names) == {"stockade.example", "127.0.0.1"}
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    assert _handshake(files, "stockade.example", ca_file).startswith("TLSv1.")
    # One file holding both (as haproxy keeps them) needs no --tls-key.
    both = tmp_path / "both.pem"
    both.write_bytes(cert.read_bytes() + key.read_bytes())
    assert load_pair(both, None).fingerprint == files.fingerprint


def _pem_key() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def test_bad_files_are_refused_with_the_file_and_the_fix(tmp_path: Path, ca: trustme.CA) -> None:
    leaf = ca.issue_cert("stockade.example")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    other_key, garbage, encrypted = (tmp_path / n for n in ("other.pem", "junk", "enc.pem"))
    other_key.write_bytes(_pem_key())
    garbage.write_text("not a certificate\n")
    encrypted.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    cases = [
        (tmp_path / "missing.pem", key, r"--tls-cert .*missing\.pem: cannot read it"),
        (cert, tmp_path / "nokey.pem", r"--tls-key .*nokey\.pem: cannot read it"),
        (garbage, key, r"--tls-cert .*junk holds no PEM certificate"),
        (cert, garbage, r"--tls-key .*junk holds no usable PEM private key"),
        (cert, encrypted, r"enc\.pem is encrypted; the server needs a key without a passphrase"),
        (cert, other_key, r"other\.pem is not the key of the certificate in --tls-cert"),
        (cert, None, r"holds no private key; pass its key with --tls-key"),
    ]
    for cert_path, key_path, message in cases:
        with pytest.raises(TlsError, match=message):
            load_pair(cert_path, key_path)


def test_an_unreadable_file_says_why(tmp_path: Path, ca: trustme.CA) -> None:
    key = tmp_path / "key.pem"
    ca.issue_cert("x.example").private_key_pem.write_to_path(str(key))
    with pytest.raises(TlsError, match="cannot read it"):
        load_pair(tmp_path, key)  # a directory: IsADirectoryError


def test_plain_http_is_flagged_only_where_other_machines_reach_it() -> None:
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert plain_http_warning(host) is None
    warning = plain_http_warning("0.0.0.0")
    assert warning is not None
    for exposed in ("admin token", "every API key", "env, files and command output"):
        assert exposed in warning
    assert "--tls-self-signed" in warning
    assert plain_http_warning("192.0.2.1") is not None
