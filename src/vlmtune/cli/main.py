"""The ``vlmtune`` command: one sub-command per verb of the pipeline.

    synth -> prepare (-> inspect) -> init-model -> (plan) -> train -> eval / predict / serve -> merge;  demo runs them all.

Each verb lives in its own module (``vlmtune.cli.<verb>``) declaring ``CONFIG``
(its typed configuration, whose ``flag()`` fields become its options) and
``run(config)``. Verbs are imported only when run or asked for ``--help``:
``vlmtune --help`` reads their summaries from the modules' docstrings without
importing them, so it answers without loading torch.

Errors end in one line, ``vlmtune VERB: what was wrong; what to do``:
:class:`~vlmtune.utils.errors.UserError` (configuration, paths, output folders)
exits 2, :class:`~vlmtune.utils.errors.RunFailure` exits 1 (or its own code),
an operating-system error on a file exits 1. ``--debug`` or ``VLMTUNE_DEBUG=1``
prints the traceback too; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Sequence

import click

from vlmtune import __version__
from vlmtune.utils.errors import RunFailure, UserError
from vlmtune.utils.logging import configure_logging

__all__ = ["VERBS", "build_app", "main"]

# (verb, module under vlmtune.cli). Order is the order of `vlmtune --help`.
VERBS: list[tuple[str, str]] = [
    ("synth", "synth"),
    ("prepare", "prepare"),
    ("inspect", "inspect"),
    ("init-model", "init_model"),
    ("serve-images", "serve_images"),
    ("plan", "plan"),
    ("train", "train"),
    ("eval", "eval"),
    ("compare", "compare"),
    ("predict", "predict"),
    ("serve", "serve"),
    ("merge", "merge"),
    ("demo", "demo"),
]
_DEBUG_ENV = "VLMTUNE_DEBUG"


class _Verbs(click.Group):
    """A group whose verbs are imported on demand (a verb imports torch; --help should not)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [verb for verb, _ in VERBS]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module_name = dict(VERBS).get(cmd_name)
        if module_name is None:
            return None
        from vlmtune.cli._command import build_command

        module = importlib.import_module(f"vlmtune.cli.{module_name}")
        return build_command(cmd_name, module.CONFIG, module.run, _help_of(module.__doc__))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(verb, _summary(module_name)) for verb, module_name in VERBS]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def build_app() -> click.Group:
    """The ``vlmtune`` group: global options and every verb (loaded when used)."""

    @click.group(
        cls=_Verbs,
        name="vlmtune",
        help="Fine-tune vision-language models on product catalogs: from a catalog to a model "
        "that writes the listing.",
        context_settings={"help_option_names": ["-h", "--help"]},
        no_args_is_help=True,
    )
    @click.version_option(
        __version__, "--version", prog_name="vlmtune", message="%(prog)s %(version)s"
    )
    @click.option("--verbose", "-v", is_flag=True, help="Debug logging.")
    @click.option(
        "--debug", is_flag=True, help="Print the traceback of every error (or VLMTUNE_DEBUG=1)."
    )
    def app(verbose: bool, debug: bool) -> None:
        configure_logging("DEBUG" if verbose else "INFO")

    return app


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get(_DEBUG_ENV, "") not in ("", "0")
    # --debug is accepted after the verb too (`vlmtune train --debug ...`)
    argv = [a for a in argv if a != "--debug"]
    verb = next((a for a in argv if not a.startswith("-")), None)
    where = f"vlmtune {verb}" if verb in dict(VERBS) else "vlmtune"
    try:
        result = build_app().main(args=argv, prog_name="vlmtune", standalone_mode=False)
    except click.ClickException as err:
        err.show()
        return err.exit_code
    except click.Abort:
        return _fail(where, "aborted", 130)
    except KeyboardInterrupt:
        return _fail(where, "interrupted", 130, debug)
    except (UserError, RunFailure) as err:
        return _fail(where, str(err), err.exit_code, debug)
    except OSError as err:
        return _fail(where, _os_message(err), 1, debug)
    return result if isinstance(result, int) else 0


def _fail(where: str, message: str, code: int, debug: bool = False) -> int:
    if debug:
        traceback.print_exc()
    first, *rest = message.strip().splitlines() or [""]
    click.echo(f"{where}: {first}", err=True)
    for line in rest:  # a listing below the one-line cause (e.g. the unreadable files)
        click.echo(line, err=True)
    return code


def _os_message(err: OSError) -> str:
    target = err.filename if err.filename is not None else ""
    what = err.strerror or type(err).__name__
    hint = {
        "PermissionError": "check the folder's permissions or choose another location",
        "IsADirectoryError": "a folder is where a file should be; choose another path",
        "NotADirectoryError": "a file is where a folder should be; choose another path",
    }.get(type(err).__name__, "")
    if getattr(err, "errno", None) == 28:
        hint = "the disk is full; free space or choose another location"
    return f"{what}: {target!s}" + (f"; {hint}" if hint else "")


def _summary(module_name: str) -> str:
    """First line of a verb module's docstring, without importing it (``--help`` stays fast)."""
    spec = importlib.util.find_spec(f"vlmtune.cli.{module_name}")
    if spec is None or spec.origin is None:
        return ""
    with open(spec.origin, encoding="utf-8") as handle:
        doc = ast.get_docstring(ast.parse(handle.read())) or ""
    first = doc.strip().splitlines()[0] if doc.strip() else ""
    summary = first.split(":", 1)[1].strip() if first.startswith("``vlmtune") else first
    return summary[:1].upper() + summary[1:].rstrip(".")


def _help_of(doc: str | None) -> str:
    """A verb's help: its module docstring without the ``vlmtune VERB:`` prefix of the first line."""
    text = (doc or "").strip()
    if text.startswith("``vlmtune"):
        text = text.split(":", 1)[1].strip()
    return (text[:1].upper() + text[1:]).replace("``", "`")


if __name__ == "__main__":
    sys.exit(main())
