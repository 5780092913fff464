"""Signed file URLs: what the signature covers, expiry, direction, and the key file."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path
from urllib.parse import parse_qsl

import pytest

from stockade.errors import ForbiddenError, InvalidArgumentError, StockadeError
from stockade.server.service.signed_urls import (
    ADMIN_MINTER,
    KEY_FILE,
    MAX_EXPIRES_S,
    UrlExpiredError,
    UrlSigner,
    check_expires,
)

NOW = 1_800_000_000.0
SB = "sb-0123456789ab"


@pytest.fixture
def signer(tmp_path: Path) -> UrlSigner:
    return UrlSigner.for_data_dir(tmp_path)


KEY_ID = "key-0123456789abcdef"


def _params(
    signer: UrlSigner, op: str = "download", path: str = "/data/f.bin", key_id: str | None = KEY_ID
) -> dict[str, str]:
    query, _ = signer.sign(SB, path, op, "acme", 60, key_id=key_id, now=NOW)
    return dict(parse_qsl(query))


def test_a_signed_url_verifies_and_grants_exactly_what_was_signed(signer: UrlSigner) -> None:
    params = _params(signer, path="/data//x/../f.bin")
    assert params["key"] == KEY_ID
    grant = signer.verify(SB, params, "download", now=NOW + 59)
    assert (grant.sandbox_id, grant.path, grant.op, grant.tenant, grant.key_id) == (
        SB, "/data/f.bin", "download", "acme", KEY_ID,
    )  # fmt: skip
    assert grant.expires == int(NOW) + 60
    # Minted with the admin token: the URL says so, the grant names no key.
    admins = _params(signer, key_id=None)
    assert admins["key"] == ADMIN_MINTER
    assert signer.verify(SB, admins, "download", now=NOW).key_id is None


@pytest.mark.parametrize(
    ("field", "value"),
    [("path", "/data/other.bin"), ("tenant", "other"), ("expires", "1900000000"),
     ("sig", "0" * 64), ("path", "/data/f.bin\n"), ("key", "key-ffffffffffffffff"),
     ("key", ADMIN_MINTER)],
)  # fmt: skip
def test_any_change_breaks_the_signature(signer: UrlSigner, field: str, value: str) -> None:
    params = _params(signer)
    params[field] = value
    with pytest.raises(ForbiddenError, match="signature does not match"):
        signer.verify(SB, params, "download", now=NOW)


def test_another_sandbox_or_key_does_not_verify(signer: UrlSigner, tmp_path: Path) -> None:
    params = _params(signer)
    with pytest.raises(ForbiddenError):
        signer.verify("sb-ffffffffffff", params, "download", now=NOW)
    other = UrlSigner(os.urandom(32))
    with pytest.raises(ForbiddenError):
        other.verify(SB, params, "download", now=NOW)


def test_the_other_direction_is_refused_with_the_fix(signer: UrlSigner) -> None:
    with pytest.raises(ForbiddenError, match=r"downloads only .*upload_url"):
        signer.verify(SB, _params(signer, "download"), "upload", now=NOW)
    with pytest.raises(ForbiddenError, match=r"uploads only .*download_url"):
        signer.verify(SB, _params(signer, "upload"), "download", now=NOW)
    # Changing op to match the method breaks the signature instead.
    params = _params(signer, "download")
    params["op"] = "upload"
    with pytest.raises(ForbiddenError, match="signature"):
        signer.verify(SB, params, "upload", now=NOW)


def test_expired(signer: UrlSigner) -> None:
    with pytest.raises(UrlExpiredError, match="expired at") as info:
        signer.verify(SB, _params(signer), "download", now=NOW + 60)
    assert (info.value.status, info.value.code) == (410, "expired")


@pytest.mark.parametrize(
    "params", [{}, {"path": "/f", "op": "download", "tenant": "t", "sig": "ab"},
               {"path": "/f", "op": "download", "tenant": "t", "sig": "ab", "expires": "-1"},
               {"path": "/f", "op": "download", "tenant": "t", "sig": "ab", "expires": "9" * 40}],
)  # fmt: skip
def test_malformed_queries_are_forbidden(signer: UrlSigner, params: dict[str, str]) -> None:
    with pytest.raises(ForbiddenError, match="not a signed file URL"):
        signer.verify(SB, params, "download", now=NOW)


# "²" and "³" are str.isdigit() but int() refuses them; Arabic-Indic and full-width digits
# are read by int(): none is an expiry, and none may reach int() (a 500) or the MAC.
@pytest.mark.parametrize("expires", ["²", "1²", "١٨٠٠٠٠٠٠٦٠", "１８００００００６０", "+1800000060",
                                     " 1800000060", "1800000060\n", "1_800_000_060",
                                     "9" * 16, ""])  # fmt: skip
def test_expires_must_be_few_ascii_digits(signer: UrlSigner, expires: str) -> None:
    params = _params(signer)
    params["expires"] = expires
    with pytest.raises(ForbiddenError, match="not a signed file URL"):
        signer.verify(SB, params, "download", now=NOW)


def test_a_url_without_its_minting_key_is_not_a_signed_url(signer: UrlSigner) -> None:
    params = _params(signer)
    del params["key"]
    with pytest.raises(ForbiddenError, match=r"not a signed file URL: .*key"):
        signer.verify(SB, params, "download", now=NOW)


def test_non_ascii_signature_is_refused_not_crashed(signer: UrlSigner) -> None:
    params = _params(signer)
    params["sig"] = "é" * 64
    with pytest.raises(ForbiddenError):
        signer.verify(SB, params, "download", now=NOW)


@pytest.mark.parametrize("expires", [0, -5, MAX_EXPIRES_S + 1, True, 1.5, "60"])
def test_lifetime_bounds(expires: object) -> None:
    with pytest.raises(InvalidArgumentError, match="expires"):
        check_expires(expires)
    assert check_expires(MAX_EXPIRES_S) == MAX_EXPIRES_S


def test_bad_paths_are_refused_when_signing(signer: UrlSigner) -> None:
    with pytest.raises(InvalidArgumentError, match="relative"):
        signer.sign(SB, "data/f", "download", "acme", 60)


def test_key_file_is_private_made_once_and_kept(tmp_path: Path) -> None:
    UrlSigner.for_data_dir(tmp_path)
    key = tmp_path / KEY_FILE
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    text = key.read_text()
    assert len(bytes.fromhex(text.strip())) == 32
    # A new server process on the same directory reads the same key.
    UrlSigner._cache.clear()
    query, _ = UrlSigner.for_data_dir(tmp_path).sign(SB, "/f", "upload", "t", 60, now=NOW)
    UrlSigner._cache.clear()
    again = UrlSigner.for_data_dir(tmp_path)
    assert again.verify(SB, dict(parse_qsl(query)), "upload", now=NOW).path == "/f"
    assert key.read_text() == text
    assert [p.name for p in tmp_path.iterdir()] == [KEY_FILE]  # no temporary left


def test_loose_key_file_is_tightened_and_a_bad_one_named(tmp_path: Path) -> None:
    key = tmp_path / KEY_FILE
    key.write_text(os.urandom(32).hex())
    key.chmod(0o644)
    UrlSigner.for_data_dir(tmp_path)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / KEY_FILE).write_text("not hex")
    with pytest.raises(StockadeError, match="delete it to have a new one made"):
        UrlSigner.for_data_dir(bad)


def test_replacing_or_deleting_the_key_file_revokes_urls_without_a_restart(
    tmp_path: Path,
) -> None:
    signer = UrlSigner.for_data_dir(tmp_path)
    key = tmp_path / KEY_FILE
    old = _params(signer)
    assert signer.verify(SB, old, "download", now=NOW).path == "/data/f.bin"
    # Replaced as an operator would: a new file moved over the old one (same size, and
    # possibly the same mtime: the inode tells them apart).
    new = tmp_path / "new.key"
    new.write_text(os.urandom(32).hex() + "\n")
    shutil.copystat(key, new)
    new.replace(key)
    assert UrlSigner.for_data_dir(tmp_path) is signer  # the same process, no restart
    with pytest.raises(ForbiddenError, match="signature does not match"):
        signer.verify(SB, old, "download", now=NOW)
    # URLs minted now use the new key.
    fresh = _params(signer)
    assert signer.verify(SB, fresh, "download", now=NOW).path == "/data/f.bin"
    # Rewritten in place (same inode and size, new bytes): its mtime tells (set apart by a
    # second here: a coarse file system clock could give two writes the same one).
    before = key.stat().st_mtime_ns
    key.write_text(os.urandom(32).hex() + "\n")
    os.utime(key, ns=(before, before + 1_000_000_000))
    with pytest.raises(ForbiddenError, match="signature does not match"):
        signer.verify(SB, fresh, "download", now=NOW)
    # Deleted: a new key is made, and URLs signed before stop working.
    third = _params(signer)
    key.unlink()
    with pytest.raises(ForbiddenError, match="signature does not match"):
        signer.verify(SB, third, "download", now=NOW)
    assert key.exists() and stat.S_IMODE(key.stat().st_mode) == 0o600
