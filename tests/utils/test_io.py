"""Atomic writes: the target is either the old file or the complete new one."""

from __future__ import annotations

import json

import pytest

from vlmtune.utils.io import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text


def test_atomic_write_creates_parents_and_content(tmp_path):
    target = tmp_path / "a" / "b" / "file.txt"
    atomic_write_text(target, "héllo 中文")
    assert target.read_text(encoding="utf-8") == "héllo 中文"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.txt"]


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "data.bin"
    atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half-writ")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]


def test_atomic_json_keeps_non_ascii(tmp_path):
    target = atomic_write_json(tmp_path / "x.json", {"category": "围巾", "n": 3})
    assert "围巾" in target.read_text(encoding="utf-8")
    assert json.loads(target.read_text(encoding="utf-8")) == {"category": "围巾", "n": 3}


def test_written_files_get_the_usual_mode_not_mkstemps_0600(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        target = atomic_write_text(tmp_path / "report.html", "<html></html>")
    finally:
        os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o644


def test_a_failed_atomic_write_bytes_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = atomic_write_bytes(tmp_path / "img.jpg", b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "text, not bytes")  # fails inside the write
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["img.jpg"]


def test_atomic_path_gives_the_usual_mode_when_the_writer_replaces_the_file(tmp_path):
    """safetensors writes through its own 0600 temporary file, renamed onto the path it is given."""
    import os

    import torch
    from safetensors.torch import save_file

    mask = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "w.safetensors") as tmp:
            save_file({"a": torch.zeros(2)}, str(tmp))
        with atomic_path(tmp_path / "other.bin") as tmp:
            private = tmp.with_name("private")
            private.write_bytes(b"x")
            private.chmod(0o600)
            private.replace(tmp)
    finally:
        os.umask(mask)
    assert (tmp_path / "w.safetensors").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "other.bin").stat().st_mode & 0o777 == 0o644
