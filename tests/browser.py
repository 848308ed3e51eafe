"""Headless Chromium for the page tests (the eval report, compare): the system's browser, no download.

``make browser`` installs Debian's ``chromium`` where it can; a test that needs it and finds
none is skipped with that advice.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

__all__ = ["chromium", "run_chromium"]


def chromium() -> str | None:
    """The path of a Chromium-family browser on this machine, or None."""
    names = ("chromium", "chromium-browser", "google-chrome")
    return next((p for p in map(shutil.which, names) if p), None)


def run_chromium(exe: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Run ``exe`` headless with a fresh ``profile`` folder and ``args`` (e.g. ``--dump-dom URL``)."""
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
    ]
    return subprocess.run([exe, *flags, *args], capture_output=True, text=True, timeout=90)
