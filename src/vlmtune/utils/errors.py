"""The two kinds of failure a command reports without a traceback.

* :class:`UserError`: something the user typed or pointed at cannot work (a missing
  folder, a bad value, an output folder that holds other work). Reported as
  ``vlmtune VERB: what was wrong; what to do`` with exit code 2, before any
  expensive work where it can be checked up front.
* :class:`RunFailure`: the work started and could not finish for a reason the
  user should know (a non-finite loss, too many unreadable images found while
  training). Reported in one line with exit code 1 (or the class's own code).

Anything else is a bug and keeps its traceback. ``--debug`` (or ``VLMTUNE_DEBUG=1``)
prints the traceback of these two as well.
"""

from __future__ import annotations

__all__ = ["Interrupted", "RunFailure", "UserError"]


class UserError(Exception):
    """A mistake the user can fix; the message names the cause and, where there is one, the fix."""

    exit_code = 2


class RunFailure(RuntimeError):
    """Work that started and could not finish; the message says what happened and what is kept."""

    exit_code = 1


class Interrupted(RunFailure):
    """The user stopped the run (Ctrl-C, SIGTERM); the message says what was kept and how to resume."""

    exit_code = 130
