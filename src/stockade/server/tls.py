"""The certificate the server serves HTTPS and WSS with: given, or made for it and kept.

- :func:`load_pair` checks an operator's ``--tls-cert``/``--tls-key`` at start (readable,
  PEM, the key belongs to the certificate), so a bad file stops the server with one line
  instead of a traceback from deep inside uvicorn.
- :func:`self_signed` makes a certificate once (``--tls-self-signed``) and keeps it in
  ``<data dir>/tls/``; later starts reuse it, so the fingerprint clients pinned stays the
  same, unless it no longer covers the names the server is reached by or is about to expire.
- :func:`plain_http_warning` says what a server reachable from other machines without TLS
  sends in clear text.

Nothing here imports the HTTP framework: ``main.py`` hands :meth:`TlsFiles.context` to uvicorn.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["TlsError", "TlsFiles", "load_pair", "plain_http_warning", "self_signed"]

# Long enough to be set and forgotten, and within the 825 days that Apple's clients accept
# for any server certificate, private roots included.
_VALIDITY = dt.timedelta(days=825)
# A kept certificate this close to its end is replaced at start rather than left to expire
# under a running server.
_RENEW_BEFORE = dt.timedelta(days=30)
# Clocks of clients that are a little behind still accept a certificate made just now.
_BACKDATE = dt.timedelta(hours=1)


# An ECDSA server key only signs handshakes.
_SIGNING_ONLY = x509.KeyUsage(
    digital_signature=True, content_commitment=False, key_encipherment=False,
    data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
    encipher_only=False, decipher_only=False,
)  # fmt: skip


class TlsError(Exception):
    """The server cannot serve TLS with these files; the message names the file and the fix."""


@dataclass(frozen=True)
class TlsFiles:
    """A certificate and its key, checked to belong together."""

    cert: Path
    key: Path | None  # None: the key is in ``cert`` too
    fingerprint: str  # SHA-256 of the certificate, as ``openssl x509 -fingerprint`` shows it
    self_signed: bool  # clients must trust this very certificate (STOCKADE_CA_BUNDLE)
    names: tuple[str, ...]  # the DNS names and addresses it is valid for
    not_after: dt.datetime
    made: str = ""  # why it was made on this start; empty: given, or kept from an earlier one

    def context(self) -> ssl.SSLContext:
        """A server-side TLS context serving this certificate (TLS 1.2 and newer)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # The server speaks HTTP/1.1 only (h11 or httptools), WebSockets included.
        context.set_alpn_protocols(["http/1.1"])
        try:
            context.load_cert_chain(self.cert, self.key)
        except (ssl.SSLError, OSError) as exc:
            raise TlsError(f"loading {self.cert} for TLS: {exc}") from None
        return context


def load_pair(cert: Path, key: Path | None) -> TlsFiles:
    """Check ``--tls-cert cert --tls-key key``; ``key`` None: the key is in ``cert``."""
    cert_data = _read(cert, "--tls-cert")
    try:
        chain = x509.load_pem_x509_certificates(cert_data)
    except ValueError:
        raise TlsError(
            f"--tls-cert {cert} holds no PEM certificate (a file with "
            "-----BEGIN CERTIFICATE-----); a DER file converts with "
            "`openssl x509 -inform der -in FILE -out FILE.pem`"
        ) from None
    if key is None:
        if b"PRIVATE KEY-----" not in cert_data:
            raise TlsError(f"--tls-cert {cert} holds no private key; pass its key with --tls-key")
        private_key = _private_key(cert_data, cert, "--tls-cert")
    else:
        private_key = _private_key(_read(key, "--tls-key"), key, "--tls-key")
    if _public_der(private_key) != _public_der_of(chain[0]):
        raise TlsError(
            f"--tls-key {key or cert} is not the key of the certificate in --tls-cert {cert} "
            "(its first certificate, which must be the server's own)"
        )
    files = _describe(chain[0], cert, key)
    files.context()  # what uvicorn will do: fails here, with a message, if ssl refuses them
    return files


def self_signed(directory: Path, host: str, tunnel_domain: str = "") -> TlsFiles:
    """The self-signed certificate kept in ``directory``, made now if there is none yet.

    It is valid for ``host`` (the machine's names when ``host`` is a wildcard address),
    localhost, 127.0.0.1 and ::1, and every ``*.tunnel_domain`` port URL. A kept one is
    reused while it covers those names and has more than a month left; otherwise a new one
    is made, covering the old names too, and ``made`` says why.
    """
    directory.mkdir(mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)  # it holds a private key: no other host user may look in
    cert, key = directory / "cert.pem", directory / "key.pem"
    wanted = _names_for(host, tunnel_domain)
    keep: tuple[str, ...] = ()
    if not cert.exists() and not key.exists():
        why = "none was kept yet"
    else:
        try:
            files = load_pair(cert, key)
        except TlsError as exc:
            why = f"the kept one is unusable ({exc})"
        else:
            keep = files.names
            missing = [n for n in wanted if n.lower() not in {k.lower() for k in keep}]
            left = files.not_after - dt.datetime.now(dt.UTC)
            if missing:
                why = f"the kept one does not cover {', '.join(missing)}"
            elif left < _RENEW_BEFORE:
                why = f"the kept one expires on {files.not_after:%Y-%m-%d}"
            else:
                os.chmod(key, 0o600)
                return files
    names = tuple(dict.fromkeys([*wanted, *keep]))
    _write_self_signed(cert, key, names)
    files = load_pair(cert, key)
    return TlsFiles(
        cert=files.cert, key=files.key, fingerprint=files.fingerprint, self_signed=True,
        names=files.names, not_after=files.not_after, made=why,
    )  # fmt: skip


def plain_http_warning(host: str) -> str | None:
    """What serving plain HTTP on ``host`` exposes, when machines other than this one can
    reach it; None for a loopback address."""
    if _is_loopback(host):
        return None
    return (
        f"serving plain HTTP on {host}, which other machines can reach: the admin token and "
        "every API key, and each sandbox's env, files and command output, cross the network "
        "in clear text. Serve TLS with --tls-cert/--tls-key or --tls-self-signed, or listen "
        "on 127.0.0.1 behind a TLS proxy"
    )


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:  # a name: loopback only if every address it stands for is
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    addresses = {ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos}
    return bool(addresses) and all(a.is_loopback for a in addresses)


def _read(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsError(f"{flag} {path}: cannot read it ({exc.strerror or exc})") from None


def _private_key(data: bytes, path: Path, flag: str) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:  # cryptography's word for "encrypted, and no password given"
        raise TlsError(
            f"{flag} {path} is encrypted; the server needs a key without a passphrase "
            f"(`openssl pkey -in {path} -out plain.pem` writes one; keep it mode 0600)"
        ) from None
    except ValueError:
        raise TlsError(
            f"{flag} {path} holds no usable PEM private key "
            "(a file with -----BEGIN PRIVATE KEY----- or -----BEGIN EC/RSA PRIVATE KEY-----)"
        ) from None
    except UnsupportedAlgorithm as exc:
        raise TlsError(f"{flag} {path}: unsupported private key ({exc})") from None


def _public_der(key: PrivateKeyTypes) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _public_der_of(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _describe(cert: x509.Certificate, path: Path, key: Path | None) -> TlsFiles:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [*san.get_values_for_type(x509.DNSName)]
        names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    digest = cert.fingerprint(hashes.SHA256())
    return TlsFiles(
        cert=path,
        key=key,
        fingerprint=":".join(f"{b:02X}" for b in digest),
        self_signed=cert.issuer == cert.subject,
        names=tuple(names),
        not_after=cert.not_valid_after_utc,
    )


def _names_for(host: str, tunnel_domain: str) -> list[str]:
    """The names and addresses clients may reach a server listening on ``host`` by."""
    names: list[str] = []
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        names.append(host.lower())
    else:
        names.append(str(address))
        if address.is_unspecified:  # 0.0.0.0 or ::: reached by the machine's names
            names += [socket.gethostname().lower(), socket.getfqdn().lower()]
    names += ["localhost", "127.0.0.1", "::1"]
    if tunnel_domain:
        names += [tunnel_domain.lower(), f"*.{tunnel_domain.lower()}"]
    return [n for n in dict.fromkeys(names) if n]


def _write_self_signed(cert_path: Path, key_path: Path, names: tuple[str, ...]) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Stockade"),
            x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64]),
        ]
    )
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    now = dt.datetime.now(dt.UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        # Not a CA: trusting this certificate trusts this server, and nothing it could sign.
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_SIGNING_ONLY, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Each file is written beside its final name and renamed over it, so a crash leaves the
    # old file or the new one, never half of one; a pair left mismatched by a crash between
    # the two renames is found by the next start's check and made again.
    _write_file(key_path, key_pem, 0o600)
    _write_file(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _write_file(path: Path, data: bytes, mode: int) -> None:
    temporary = path.with_name(path.name + ".new")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(temporary, mode)
    os.replace(temporary, path)
