"""The output folder of ``vlmtune prepare``: claimed before any work, locked while a run writes.

The policy is :mod:`vlmtune.utils.outputs`'s. ``--out`` may be missing, empty,
or an earlier output of ``prepare`` built from the same catalog (the marker's
identity: the catalog's resolved path, or its hub name), and then the run
writes in place and resumes. Column mapping, split and image settings are not
part of the identity: changing them re-prepares the same dataset (images are
re-stored only where their settings changed). Anything else needs
``--overwrite``, and then the new dataset is built in a staging folder beside
the old one and swapped in at the end, so an interrupted run leaves the old
folder whole. A folder that is or contains the catalog is always refused.

An output written before markers existed is recognised by its dataset card
(``created_by: vlmtune prepare``) or by the journal or lock of a first run that
was killed; one made from another catalog is refused like a marked one.

While a run writes in place it holds an OS lock on ``.prepare.lock``
(:mod:`filelock`; released by the OS even after SIGKILL), so a second run on the
same folder stops at once with a clear message instead of interleaving writes.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import filelock

from vlmtune.data.prepare.args import PrepareArgs, PrepareError
from vlmtune.data.prepare.journal import JOURNAL
from vlmtune.data.prepare.pool import IMAGES_DIR
from vlmtune.data.prepared import DATASET_INFO
from vlmtune.utils.outputs import (
    MARKER,
    OutputClaim,
    OutputError,
    claim_output_dir,
    replace_dir,
    write_marker,
)

__all__ = ["LOCK", "VERB", "catalog_identity", "claim_output", "workspace"]

VERB = "prepare"
LOCK = ".prepare.lock"


def catalog_identity(source: str) -> dict[str, Any]:
    """What tells one prepare output from another: the catalog's resolved path, or its hub name."""
    path = Path(source).expanduser()
    return {"catalog": str(path.resolve()) if path.exists() else str(source)}


def claim_output(args: PrepareArgs) -> OutputClaim:
    """Decide, before any work, whether ``args.out`` may receive this catalog's dataset.

    Raises :class:`~vlmtune.utils.outputs.OutputError` naming what is there and the fix.
    """
    out = Path(args.out)
    identity = catalog_identity(args.source)
    source = Path(args.source).expanduser()
    legacy = _legacy_card(out)
    same = legacy is not None and _same_catalog(legacy, identity)
    if legacy is not None and not same and not args.overwrite:
        raise OutputError(
            f"--out {str(out)!r} holds an earlier `vlmtune prepare` output made from "
            f"{legacy['source']!r}, not from {args.source!r}; pass --overwrite to replace it, "
            "or choose another --out"
        )
    return claim_output_dir(
        out, VERB, inputs={"the catalog": source if source.exists() else None},
        overwrite=args.overwrite, identity=identity, legacy=lambda _folder: same,
    )  # fmt: skip


@contextlib.contextmanager
def workspace(claim: OutputClaim, identity: dict[str, Any]) -> Iterator[Path]:
    """The folder to build the dataset in: the output itself (locked, marked) or a staging folder.

    In place for a missing, empty or own output (resumable); for ``overwrite``,
    a staging folder swapped into place when the block ends without an exception.
    """
    if claim.state == "overwrite":
        with replace_dir(claim.path, VERB, identity) as staging:
            (staging / IMAGES_DIR).mkdir()
            yield staging
        return
    out = claim.path
    out.mkdir(parents=True, exist_ok=True)
    with _locked(out):
        write_marker(out, VERB, identity)
        (out / IMAGES_DIR).mkdir(exist_ok=True)
        for folder in (out, out / IMAGES_DIR):
            for stale in folder.glob(".*.tmp"):  # temp files of a killed run (utils.io naming)
                stale.unlink(missing_ok=True)
        yield out


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Refuse a second run writing to the same folder (an OS lock: released even by SIGKILL)."""
    lock = filelock.FileLock(str(out / LOCK), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout as err:
        raise PrepareError(
            f"another `vlmtune prepare` is writing to {str(out)!r}; wait for it to end "
            "(or stop it), then run the same command again to resume"
        ) from err
    try:
        yield
    finally:
        lock.release()


def _legacy_card(folder: Path) -> dict[str, Any] | None:
    """The dataset card of a prepare output written before markers ({} for a killed first run)."""
    if not folder.is_dir() or (folder / MARKER).exists():
        return None
    try:
        card = json.loads((folder / DATASET_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        card = None
    if isinstance(card, dict) and card.get("created_by") == "vlmtune prepare":
        return card
    if (folder / JOURNAL).is_file() or (folder / LOCK).is_file():
        return {}
    return None


def _same_catalog(card: dict[str, Any], identity: dict[str, Any]) -> bool:
    recorded = card.get("source")
    return not recorded or catalog_identity(str(recorded)) == identity
