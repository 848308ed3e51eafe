"""configure_logging: vlmtune's records go to the current sys.stderr, at the chosen level, once."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from vlmtune.utils.logging import configure_logging, get_logger


@pytest.fixture
def vlmtune_logger():
    """The ``vlmtune`` logger without our handler; its state is put back afterwards."""
    logger = logging.getLogger("vlmtune")
    saved = (logger.level, list(logger.handlers), logger.propagate)
    logger.handlers = [h for h in logger.handlers if not getattr(h, "_vlmtune", False)]
    yield logger
    logger.setLevel(saved[0])
    logger.handlers = saved[1]
    logger.propagate = saved[2]


def _swap_stderr(monkeypatch) -> io.StringIO:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    return stream


def test_records_go_to_the_current_stderr_at_the_chosen_level(vlmtune_logger, monkeypatch):
    configure_logging("INFO")
    stream = _swap_stderr(
        monkeypatch
    )  # replaced after the handler exists, as pytest's capture does
    log = get_logger("tests.logging")
    log.debug("too detailed")
    log.info("shown")
    text = stream.getvalue()
    assert "INFO vlmtune.tests.logging: shown" in text
    assert "too detailed" not in text

    configure_logging("DEBUG")
    log.debug("now detailed")
    assert "DEBUG vlmtune.tests.logging: now detailed" in stream.getvalue()


def test_configuring_twice_adds_one_handler(vlmtune_logger, monkeypatch):
    configure_logging()
    configure_logging()
    ours = [h for h in vlmtune_logger.handlers if getattr(h, "_vlmtune", False)]
    assert len(ours) == 1
    stream = _swap_stderr(monkeypatch)
    get_logger("tests.logging").warning("once")
    assert stream.getvalue().count("once") == 1
    assert vlmtune_logger.propagate is False  # the root logger does not print it a second time


def test_get_logger_places_every_name_under_vlmtune():
    assert get_logger("data.prepare").name == "vlmtune.data.prepare"
    assert get_logger("vlmtune.cli").name == "vlmtune.cli"
