"""The ``stockade`` command: global options, error handling, and the verbs wired together."""

from __future__ import annotations

from typing import Any

import click

from stockade import StockadeError, __version__
from stockade.cli._common import CliState, print_error
from stockade.cli.access import key, tenant
from stockade.cli.audit import audit
from stockade.cli.changes import changes
from stockade.cli.code import code, code_context
from stockade.cli.files import chmod, cp, mv, url, watch
from stockade.cli.images import image, images
from stockade.cli.mcp import mcp
from stockade.cli.network import network
from stockade.cli.ports import expose, port_forward, unexpose
from stockade.cli.run import exec_, run
from stockade.cli.sandboxes import create, info, logs, ls, rm, set_timeout
from stockade.cli.serve import serve
from stockade.cli.shell import shell
from stockade.cli.snapshots import fork, pause, resume, snapshot
from stockade.cli.usage import usage
from stockade.cli.volumes import volume

_EXIT_INTERRUPTED = 130


class _Group(click.Group):
    """Turns Stockade errors into ``error: …`` and exit 1, and Ctrl-C into exit 130."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except StockadeError as exc:
            print_error(str(exc))
            raise click.exceptions.Exit(1) from None
        except KeyboardInterrupt:
            click.echo("", err=True)  # end the line that ^C was typed on
            raise click.exceptions.Exit(_EXIT_INTERRUPTED) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--url", metavar="URL",
    help="Server URL [env: STOCKADE_URL; default: http://127.0.0.1:7423].",
)  # fmt: skip
@click.option(
    "--token", metavar="TOKEN",
    help="API token [env: STOCKADE_TOKEN; default: the local server's token file].",
)  # fmt: skip
@click.option(
    "--ca-bundle", metavar="FILE", type=click.Path(exists=True),
    help="CA certificates to trust for an https:// server, e.g. its self-signed "
    "certificate [env: STOCKADE_CA_BUNDLE].",
)  # fmt: skip
@click.version_option(__version__, prog_name="stockade")
@click.pass_context
def cli(ctx: click.Context, url: str | None, token: str | None, ca_bundle: str | None) -> None:
    """Run untrusted code in gVisor sandboxes on a self-hosted Stockade server.

    \b
    Quick start:
      stockade serve                     # on the host, as root
      stockade run -- python3 -c 'print(6*7)'
      ID=$(stockade create) && stockade shell $ID
    """
    # Tests hand in a prepared state (with a fake client) through CliRunner(obj=...).
    state = ctx.ensure_object(CliState)
    state.url = url or state.url
    state.token = token or state.token
    state.ca_bundle = ca_bundle or state.ca_bundle
    ctx.call_on_close(state.close)


for _command in (
    serve, images, create, ls, info, rm, logs, run, exec_, shell, code, code_context, cp,
    network, expose, unexpose, port_forward, image,
):  # fmt: skip
    cli.add_command(_command)
cli.add_command(set_timeout)
cli.add_command(changes)
cli.add_command(volume)
cli.add_command(tenant)
cli.add_command(key)
cli.add_command(audit)
cli.add_command(usage)
cli.add_command(mcp)
for _command in (snapshot, pause, resume, fork):
    cli.add_command(_command)
for _command in (mv, chmod, watch, url):
    cli.add_command(_command)


def main() -> None:
    """Entry point of the ``stockade`` script."""
    cli.main(prog_name="stockade")


if __name__ == "__main__":
    main()
