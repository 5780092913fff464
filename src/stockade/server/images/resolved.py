"""What a sandbox needs of its image, whatever kind of image it is."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .oci import ImageConfig, PulledImage

__all__ = ["ResolvedImage"]


@dataclass(frozen=True)
class ResolvedImage:
    """What a sandbox needs of its image: the layers (top-first, for ``lowerdir``) and the
    defaults of the image's config."""

    lowerdirs: tuple[Path, ...]
    env: dict[str, str]
    workdir: str | None
    user: str | None = None  # the image's USER: name, uid, name:group or uid:gid
    # The image's ENTRYPOINT + CMD: what `image_entrypoint=True` runs as the main process.
    command: tuple[str, ...] = ()

    @classmethod
    def of_pulled(cls, image: PulledImage) -> ResolvedImage:
        config = image.config
        return cls(
            tuple(image.lowerdirs),
            _env_map(config),
            config.working_dir or None,
            config.user or None,
            (*config.entrypoint, *config.cmd),
        )


def _env_map(config: ImageConfig) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in config.env:
        key, sep, value = item.partition("=")
        if sep and key:
            env[key] = value
    return env
