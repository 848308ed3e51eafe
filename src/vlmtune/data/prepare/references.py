"""How each image reference of a catalog is read: an http(s) URL, a local file, or refused.

One job per distinct reference (a URL shared by rows is fetched once). A
reference is refused before any I/O when it is a URL of another scheme or a
malformed one (:func:`vlmtune.data.urls.check_url`), or a local path that is
absolute or leaves the catalog's folder (unless ``allow_local``). A relative name
with a colon such as ``a:b.jpg`` is a path, not a scheme. The host policy of
http(s) URLs (no link-local or cloud-metadata address) is applied by the fetcher
to the URL and to every redirect alike (:mod:`vlmtune.data.urls`), so it has one home.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from vlmtune.data.urls import ALLOWED_SCHEMES, check_url

__all__ = ["Job", "catalog_folder", "make_jobs"]

# URL schemes commonly written without "//" after the colon; any other "name:rest" without
# "//" is a relative file name that happens to contain a colon.
_SCHEMES_WITHOUT_SLASHES = {"file", "data", "javascript", "vbscript", "mailto", "about", "blob",
                            "ftp", "ftps", "sftp", "gopher", "tel", "urn", "news", "jar"}  # fmt: skip


@dataclass
class Job:
    """One distinct image reference and the catalog rows (0-based, kept rows) that use it."""

    ref: str
    rows: list[int] = field(default_factory=list)
    kind: str = "url"
    """``url``, ``local`` or ``refused``."""
    target: str = ""
    """URL or absolute file path to read."""
    refusal: str = ""
    """Why the reference is refused (``"<kind>: <details>"``), when ``kind`` is ``refused``."""


def catalog_folder(source: str) -> Path | None:
    """The folder relative image paths are read from: the catalog file's, or the catalog folder."""
    path = Path(source)
    if path.is_file():
        return path.resolve().parent
    if path.is_dir():
        return path.resolve()
    return None  # a hub dataset has no folder


def make_jobs(refs: Iterable[Any], folder: Path | None, allow_local: bool) -> list[Job]:
    """One job per distinct image reference, in first-seen order."""
    by_ref: dict[str, Job] = {}
    for row, raw in enumerate(refs):
        ref = str(raw).strip()
        job = by_ref.get(ref)
        if job is None:
            job = by_ref[ref] = _classify(ref, folder, allow_local)
        job.rows.append(row)
    return list(by_ref.values())


def _classify(ref: str, folder: Path | None, allow_local: bool) -> Job:
    """Decide how ``ref`` is read: an http(s) URL, a local file, or refused (with the reason)."""
    try:
        scheme = urlsplit(ref).scheme.lower()
    except ValueError as err:
        return _refused(ref, f"bad url: {err}")
    if scheme in ALLOWED_SCHEMES:
        refusal = check_url(ref)
        return _refused(ref, refusal) if refusal else Job(ref, kind="url", target=ref)
    if _is_url(ref, scheme):
        return _refused(
            ref, f"unsupported scheme: {scheme!r} (only http and https URLs are fetched)"
        )
    return _classify_path(ref, folder, allow_local)


def _is_url(ref: str, scheme: str) -> bool:
    """Whether ``ref`` is a URL of another scheme rather than a local path with a colon in it.

    ``a:b.jpg`` parses with the scheme ``a`` but names a file; a reference is a
    URL when ``//`` follows its scheme (``ftp://``, ``s3://``) or when the scheme
    is one that is written without it (``file:``, ``data:``, ``javascript:``...).
    """
    if not scheme or (len(scheme) == 1 and os.name == "nt"):  # C:\... is a drive letter
        return False
    return ref[len(scheme) + 1 :].startswith("//") or scheme in _SCHEMES_WITHOUT_SLASHES


def _classify_path(ref: str, folder: Path | None, allow_local: bool) -> Job:
    if "\0" in ref:
        return _refused(ref, "bad path: the image path contains a NUL character")
    path = Path(ref)
    if path.is_absolute() and not allow_local:
        return _refused(
            ref, f"absolute path: {ref!r} is refused (pass --allow-local-paths to read it)"
        )
    if folder is None and not allow_local:
        return _refused(
            ref,
            f"local path: {ref!r} but the catalog is not a local file, so there is no folder to read it from",
        )
    base = folder or Path.cwd()
    target = (base / path).resolve()
    if not allow_local and not target.is_relative_to(base):
        return _refused(
            ref,
            f"path escapes the catalog folder: {ref!r} resolves outside {str(base)!r} (pass --allow-local-paths)",
        )
    return Job(ref, kind="local", target=str(target))


def _refused(ref: str, reason: str) -> Job:
    return Job(ref, kind="refused", refusal=reason)
