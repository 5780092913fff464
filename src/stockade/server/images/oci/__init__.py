"""Images from OCI registries: pull into an overlay-ready layer store, export as OCI layout.

- ``reference``: parse ``python:3.12-slim`` and friends as Docker does;
- ``registry``: the distribution API client (manifests, blobs, Basic and token auth);
- ``layers``: the layer store, unpacking each layer once, safely, with overlay whiteouts;
- ``image``: ``pull()``, tying the three together and remembering what was pulled;
- ``export``: ``export_layout()``, layer directories back to an OCI image layout tarball.
"""

from .export import export_layout
from .image import ImageConfig, PulledImage, pull
from .layers import LayerStore, unpack_copy
from .reference import Reference, parse_reference
from .registry import RegistryAuth, RegistryClient

__all__ = [
    "ImageConfig",
    "LayerStore",
    "PulledImage",
    "Reference",
    "RegistryAuth",
    "RegistryClient",
    "export_layout",
    "parse_reference",
    "pull",
    "unpack_copy",
]
