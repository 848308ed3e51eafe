"""JSON-lines files survive a writer killed mid-record; damage elsewhere is named by line."""

from __future__ import annotations

import json
import logging

import pytest

from vlmtune.utils.jsonl import JsonlError, append_jsonl, read_jsonl


def _write(path, records, tail=b""):
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in records) + tail)


def test_records_come_back_in_order(tmp_path):
    path = tmp_path / "m.jsonl"
    _write(path, [{"step": 1}, {"step": 2}], tail=b"\n")  # a blank line is not a record
    assert read_jsonl(path) == [{"step": 1}, {"step": 2}]


def test_a_torn_last_line_is_dropped_with_a_warning_naming_it(tmp_path, caplog):
    path = tmp_path / "m.jsonl"
    _write(path, [{"step": 1}, {"step": 2}], tail=b'{"step": 3, "lo')
    with caplog.at_level(logging.WARNING, logger="vlmtune"):
        assert read_jsonl(path) == [{"step": 1}, {"step": 2}]
    assert "line 3" in caplog.text and "m.jsonl" in caplog.text


def test_a_bad_line_before_the_last_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    with pytest.raises(JsonlError, match=r"m\.jsonl: line 2 is not valid JSON"):
        read_jsonl(path)


def test_a_complete_but_invalid_last_line_is_damage_not_a_torn_write(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"step": 1}\nnot json\n')  # ends in a newline: the writer finished it
    with pytest.raises(JsonlError, match="line 2"):
        read_jsonl(path)


def test_non_object_lines_are_refused(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"step": 1}\n[1, 2]\n')
    with pytest.raises(JsonlError, match="line 2 is not a JSON object"):
        read_jsonl(path)


def test_missing_file_is_empty_unless_required(tmp_path):
    assert read_jsonl(tmp_path / "none.jsonl") == []
    with pytest.raises(FileNotFoundError):
        read_jsonl(tmp_path / "none.jsonl", missing_ok=False)


def test_append_after_a_torn_tail_cuts_it_so_the_new_record_survives(tmp_path):
    path = tmp_path / "m.jsonl"
    _write(path, [{"step": 1}], tail=b'{"step": 2, "lo')
    append_jsonl(path, {"step": 2, "loss": 0.5})
    append_jsonl(path, {"step": 3, "category": "围巾"})
    assert read_jsonl(path) == [
        {"step": 1},
        {"step": 2, "loss": 0.5},
        {"step": 3, "category": "围巾"},
    ]


def test_append_to_a_file_that_is_only_a_torn_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"ste')
    append_jsonl(path, {"step": 1})
    assert path.read_bytes() == b'{"step": 1}\n'
