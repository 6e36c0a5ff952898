"""The ``pennello`` command. Each subcommand lives with the part it belongs to and is imported
only when used, so ``pennello --help`` stays fast and never imports torch.

    $ pennello --help
    $ pennello install pennello-tiny && pennello verify
"""

from __future__ import annotations

import importlib
import sys

import click

from pennello import __version__
from pennello.errors import PennelloError

# name -> "module:attribute" of a click command; the part that owns it defines it.
COMMANDS: dict[str, str] = {
    "install": "pennello.installer.cli:install",
    "models": "pennello.installer.cli:models",
    "verify": "pennello.installer.cli:verify",
    "remove": "pennello.installer.cli:remove",
    "keys": "pennello.installer.cli:keys",
    "manifest": "pennello.installer.cli:manifest",
    "bundle": "pennello.installer.cli:bundle",
    "serve": "pennello.daemon.cli.core:serve",
    "node": "pennello.daemon.cli.cluster:node",
    "status": "pennello.daemon.cli.core:status",
    "generate": "pennello.daemon.cli.core:generate",
    "stop": "pennello.daemon.cli.manage:stop",
    "ps": "pennello.daemon.cli.manage:ps",
    "load": "pennello.daemon.cli.manage:load",
    "unload": "pennello.daemon.cli.manage:unload",
    "queue": "pennello.daemon.cli.manage:queue",
    "pair": "pennello.daemon.cli.auth:pair",
    "tokens": "pennello.daemon.cli.auth:tokens",
    "open": "pennello.daemon.cli.auth:open_page",
    "discover": "pennello.client.cli:discover",
    "offline": "pennello.daemon.cli.offline:offline",
    "tray": "pennello.tray.cli:tray",
    "enhance": "pennello.daemon.cli.tools:enhance",
    "upscale": "pennello.daemon.cli.tools:upscale",
    "edit": "pennello.daemon.cli.tools:edit",
    "copyright": "pennello.daemon.cli.tools:copyright_check",
    "batch": "pennello.daemon.cli.tools:style_batch",
    "styles": "pennello.daemon.cli.tools:styles",
    "pipeline": "pennello.daemon.cli.tools:pipeline",
}


class LazyGroup(click.Group):
    """A click group that imports a subcommand's module only when that subcommand is needed."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        return getattr(importlib.import_module(module_name), attr)

    def invoke(self, ctx: click.Context):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except PennelloError as e:
            # One place maps our errors to a message and an exit code.
            click.secho(f"error: {e}", fg="red", err=True)
            ctx.exit(e.exit_code)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pennello")
@click.option("--debug", is_flag=True, envvar="PENNELLO_DEBUG", help="Debug logging, with per-stage timings.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Pennello: private image generation on your own machine.

    Models are verified against signed manifests before anything can load them, and after
    setup nothing leaves the machine. Typical first steps:

    \b
      pennello install pennello-tiny   # the small embedded model, no download
      pennello verify                  # re-hash every installed file
      pennello serve                   # keep the model warm and serve the HTTP API

    All state lives in the platform's user directories; PENNELLO_HOME=DIR puts it all in DIR.
    """
    from pennello.logs import setup_logging
    from pennello.paths import get_paths

    setup_logging(debug=debug, log_dir=get_paths().log_dir)
    ctx.ensure_object(dict)


def main() -> None:
    """Console-script entry point."""
    sys.exit(cli.main(prog_name="pennello", standalone_mode=True))
