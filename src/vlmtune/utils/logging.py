"""Logging set-up: one ``vlmtune`` logger hierarchy, configured once by the CLI."""

from __future__ import annotations

import logging
import sys

__all__ = ["configure_logging", "get_logger"]

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def get_logger(name: str) -> logging.Logger:
    """Return the logger for a vlmtune module (``vlmtune.<...>``); library code never configures it."""
    if not name.startswith("vlmtune"):
        name = f"vlmtune.{name}"
    return logging.getLogger(name)


def configure_logging(level: int | str = logging.INFO) -> None:
    """Send vlmtune's log records to stderr at ``level``. Called by the CLI, not by library code."""
    root = logging.getLogger("vlmtune")
    root.setLevel(level)
    if not any(getattr(h, "_vlmtune", False) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
        handler._vlmtune = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.propagate = False


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (it may be replaced, e.g. by pytest's capture)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the property ignores it
        pass
