"""The ``vlmtune`` command: one sub-command per verb of the pipeline.

    synth -> prepare -> init-model -> train -> eval / predict -> merge;  demo runs them all.

Each verb lives in its own module (``vlmtune.cli.<verb>``) exposing ``command``;
this module only registers them and turns configuration errors into a one-line
message and exit code 2, before any work starts.
"""

from __future__ import annotations

import importlib
import sys

import typer

from vlmtune import __version__
from vlmtune.utils.config import ConfigError
from vlmtune.utils.logging import configure_logging

__all__ = ["VERBS", "build_app", "main"]

# (verb, module under vlmtune.cli). Order is the order of `vlmtune --help`.
VERBS: list[tuple[str, str]] = [
    ("synth", "synth"),
    ("prepare", "prepare"),
    ("init-model", "init_model"),
    ("serve-images", "serve_images"),
    ("train", "train"),
    ("eval", "eval"),
    ("predict", "predict"),
    ("merge", "merge"),
    ("demo", "demo"),
]


def build_app(only: str | None = None) -> typer.Typer:
    """The typer app with every verb, or with ``only`` that verb.

    Each verb module imports its library layer (torch and transformers for most),
    so running one verb registers only that one: ``vlmtune prepare`` does not pay
    for importing the trainer. ``--help`` at the top level registers them all.
    """
    app = typer.Typer(
        name="vlmtune",
        help="Fine-tune Phi-3-Vision on product catalogs: from a catalog to a model that writes the listing.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.callback()(_root)
    for verb, module_name in VERBS:
        if only is None or verb == only:
            module = importlib.import_module(f"vlmtune.cli.{module_name}")
            app.command(verb, help=module.command.__doc__)(module.command)
    return app


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"vlmtune {__version__}")
        raise typer.Exit()


def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    configure_logging("DEBUG" if verbose else "INFO")


def _requested_verb(argv: list[str]) -> str | None:
    """The verb named on the command line (first argument that is not an option), if it is one."""
    verbs = {verb for verb, _ in VERBS}
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in verbs else None
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    try:
        # with standalone_mode=False click returns a command's typer.Exit code instead of raising it
        argv = list(sys.argv[1:] if argv is None else argv)
        verb = _requested_verb(argv)
        app = build_app(only="" if verb is None and "--version" in argv else verb)
        result = app(args=argv, standalone_mode=False)
    except ConfigError as err:
        typer.echo(f"vlmtune: configuration error: {err}", err=True)
        return 2
    except typer.Exit as exit_:
        return exit_.exit_code
    except typer.Abort:
        typer.echo("vlmtune: aborted", err=True)
        return 130
    except Exception as err:  # click usage errors carry their own exit code
        code = getattr(err, "exit_code", None)
        if code is not None and hasattr(err, "show"):
            err.show()
            return code
        raise
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
