"""Client-level calls: health, images, image builds."""

from __future__ import annotations

import pytest

from stockade import Client, ImageInfo, NotFoundError
from tests.unit.fakes import FakeApi


def test_images(client: Client) -> None:
    images = client.images()
    assert [(i.name, i.ready) for i in images] == [("python", True), ("base", False)]


def test_build_image_reports_logs(client: Client, api: FakeApi) -> None:
    lines: list[str] = []
    image = client.build_image("base", on_log=lines.append)
    assert lines == ["I: Retrieving base"]
    assert image == ImageInfo("base", True, "Debian minbase", 206)
    assert api.last().url.path == "/v1/images/base/build"
    assert client.build_image("base").ready  # already built: just the done event


def test_build_unknown_image(client: Client) -> None:
    with pytest.raises(NotFoundError, match="try python"):
        client.build_image("nope")


def test_client_repr_and_url(client: Client) -> None:
    assert repr(client).startswith("<Client url='http://127.0.0.1:")
