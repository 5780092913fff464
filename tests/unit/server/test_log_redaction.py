"""The server's access log never holds a signed URL's signature: uvicorn's own access
records, formatted by uvicorn's own formatter, after uvicorn's own logging setup."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import uvicorn
from uvicorn.logging import AccessFormatter
from uvicorn.protocols.utils import get_path_with_query_string

from stockade.server.main import SignedUrlRedactor, install_log_filters

SIG = "9f" * 32
SIGNED_QUERY = (
    "path=%2Fdata%2Fout.bin&op=download&tenant=acme&key=key-0123456789abcdef"
    f"&expires=1800000000&sig={SIG}"
)


def _access_record(path: str, query: str) -> logging.LogRecord:
    """The record uvicorn's HTTP protocols log for one request (h11_impl / httptools_impl)."""
    scope = {"path": path, "query_string": query.encode()}
    return logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", get_path_with_query_string(scope), "1.1", 200), None,  # type: ignore[arg-type]
    )  # fmt: skip


def _line(record: logging.LogRecord) -> str:
    return AccessFormatter(fmt='%(client_addr)s - "%(request_line)s" %(status_code)s').format(
        record
    )


@pytest.fixture
def access_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger("uvicorn.access")
    saved = list(logger.filters)
    yield logger
    logger.filters[:] = saved


def test_the_query_of_a_signed_url_is_redacted_and_its_path_kept() -> None:
    record = _access_record("/v1/signed/sandboxes/sb-0123456789ab/files", SIGNED_QUERY)
    assert SIG in _line(record)  # what uvicorn would have written
    assert SignedUrlRedactor().filter(record) is True  # the line stays, without the query
    line = _line(record)
    assert SIG not in line and "sig=" not in line and "expires=" not in line
    assert "GET /v1/signed/sandboxes/sb-0123456789ab/files?[redacted] HTTP/1.1" in line
    assert '" 200' in line


@pytest.mark.parametrize(
    ("path", "query"),
    [("/v1/sandboxes/sb-0123456789ab/files", "path=%2Fdata%2Fout.bin"),
     ("/v1/sandboxes", ""), ("/healthz", "sig=not-a-signed-route")],
)  # fmt: skip
def test_other_requests_are_logged_as_they_were(path: str, query: str) -> None:
    record = _access_record(path, query)
    before = _line(record)
    assert SignedUrlRedactor().filter(record) is True
    assert _line(record) == before


def test_the_filter_survives_uvicorns_logging_setup(access_logger: logging.Logger) -> None:
    install_log_filters()
    install_log_filters()  # once only, however often the server starts in a process
    assert sum(isinstance(f, SignedUrlRedactor) for f in access_logger.filters) == 1
    # What uvicorn.run does before serving: its dictConfig of the uvicorn loggers.
    uvicorn.Config(app="x:y", log_level="info").configure_logging()
    record = _access_record("/v1/signed/sandboxes/sb-0123456789ab/files", SIGNED_QUERY)
    assert access_logger.filter(record)
    assert SIG not in _line(record)
