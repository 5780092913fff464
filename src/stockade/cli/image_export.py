"""``stockade image export``: save an image as an OCI image layout tarball.

The download goes to ``OUT.partial`` and is renamed to ``OUT`` only once complete, so a
failed or interrupted export never leaves a file that looks like a good one. The server
sends a Content-Length, so a connection that drops early is an error, not a short file.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from stockade import StockadeError
from stockade.cli._common import CliState, fail, pass_state, stderr_console

__all__ = ["export"]


@click.command("export")
@click.argument("ref")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--tag", help="The tag inside the tarball [default: the reference's tag, or latest].")
@pass_state
def export(state: CliState, ref: str, out: Path, tag: str | None) -> None:
    """Save an image as an OCI layout tarball.

    REF is a pulled registry image (see `stockade image ls`) or a base image; the tarball
    is written to OUT.

    \b
    Then, for example:
      stockade image export 127.0.0.1:5000/team/app:v1 app.tar
      skopeo copy oci-archive:app.tar:v1 docker://registry.example/team/app:v1
      podman load -i app.tar
    """
    params = {"ref": ref, **({"tag": tag} if tag else {})}
    partial = out.with_name(out.name + ".partial")
    client = state.client()
    stderr_console().print(f"exporting {ref} (the server packs its layers first)")
    done = False
    try:
        # Opened before asking: an unwritable OUT fails at once, not after the packing.
        with (
            partial.open("wb") as file,
            client.stream("GET", "/v1/images/export", params=params) as chunks,
        ):
            for chunk in chunks:
                file.write(chunk)
        size = partial.stat().st_size
        partial.replace(out)
        done = True
    except StockadeError:
        raise  # the `stockade` group prints it as `error: …` and exits 1
    except OSError as exc:  # after StockadeError: a connection error is an OSError too
        fail(f"could not write {out}: {exc.strerror or exc}")
    finally:
        if not done:
            # Suppressed: a directory named OUT.partial is the user's, not ours to remove.
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
    click.echo(f"{out} ({size / (1024 * 1024):.1f} MiB)")
