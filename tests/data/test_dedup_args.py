"""DedupArgs: the measured defaults, validation with clear errors, a docstring for every flag."""

from __future__ import annotations

import pytest

from vlmtune.data.dedup import DEFAULT_MAX_BITS
from vlmtune.data.dedup_args import DedupArgs
from vlmtune.utils.config import ConfigError, field_docs


def test_dedup_args_validate_and_document_their_flags():
    assert DedupArgs().max_bits == DEFAULT_MAX_BITS and DedupArgs(near_bits=-1).max_bits is None
    assert set(field_docs(DedupArgs)) == {"near_bits", "near_colour", "on_conflict"}
    for bad, words in (
        ({"near_bits": 65}, "near_bits must be between 0 and 64"),
        ({"near_colour": -1.0}, "near_colour"),
        ({"on_conflict": "last"}, "keep, drop-group, first"),
    ):
        with pytest.raises(ConfigError, match=words):
            DedupArgs(**bad)
