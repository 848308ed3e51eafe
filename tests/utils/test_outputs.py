"""The output policy: a verb writes only where it may, and replacing an output is atomic."""

from __future__ import annotations

import os

import pytest

from vlmtune.utils.errors import UserError
from vlmtune.utils.outputs import (
    MARKER,
    OutputError,
    claim_output_dir,
    claim_output_file,
    read_marker,
    replace_dir,
    write_marker,
)


def _tree(folder):
    """Every file under ``folder`` with its bytes (the byte-identical check)."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_missing_and_empty_folders_are_claimed(tmp_path):
    assert claim_output_dir(tmp_path / "new", "synth").state == "missing"
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".DS_Store").write_bytes(b"finder")
    assert claim_output_dir(tmp_path / "empty", "synth").state == "empty"


def test_a_foreign_folder_is_refused_naming_what_is_there(tmp_path):
    (tmp_path / "mine").mkdir()
    for name in ("catalog.csv", "notes.txt", "a.jpg", "b.jpg"):
        (tmp_path / "mine" / name).write_text(name)
    before = _tree(tmp_path)
    with pytest.raises(OutputError) as err:
        claim_output_dir(tmp_path / "mine", "synth")
    message = str(err.value)
    assert "a.jpg, b.jpg, catalog.csv and 1 more" in message and "--overwrite" in message
    assert isinstance(err.value, UserError)
    assert _tree(tmp_path) == before


def test_an_earlier_output_of_the_same_verb_is_reused_and_of_another_verb_refused(tmp_path):
    out = tmp_path / "run"
    write_marker(out, "train", {"data": "d1"})
    (out / "metrics.jsonl").write_text("{}\n")
    claim = claim_output_dir(out, "train", identity={"data": "d1"})
    assert claim.state == "own" and claim.previous["identity"] == {"data": "d1"}
    with pytest.raises(OutputError, match="holds the output of `vlmtune train`"):
        claim_output_dir(out, "merge")
    assert claim_output_dir(out, "merge", overwrite=True).state == "overwrite"


def test_the_same_verb_with_another_identity_needs_overwrite(tmp_path):
    out = tmp_path / "data"
    write_marker(out, "prepare", {"source": "a.csv"})
    with pytest.raises(OutputError, match=r"made from source=a\.csv, not from source=b\.csv"):
        claim_output_dir(out, "prepare", identity={"source": "b.csv"})
    assert claim_output_dir(out, "prepare", identity={"source": "b.csv"}, overwrite=True).existed


def test_inputs_are_refused_even_with_overwrite(tmp_path):
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    for out in (run, tmp_path):  # the input itself, and a folder that contains it
        with pytest.raises(OutputError, match="the run being merged.*even with --overwrite"):
            claim_output_dir(out, "merge", inputs={"the run being merged": run}, overwrite=True)
    # writing *inside* an input is not destroying it
    assert claim_output_dir(run / "merged", "merge", inputs={"the run": run}).state == "missing"


def test_a_symlink_to_an_input_is_the_input(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    os.symlink(base, tmp_path / "alias")
    with pytest.raises(OutputError, match="is the base model"):
        claim_output_dir(tmp_path / "alias", "merge", inputs={"the base model": base})


def test_a_file_where_a_folder_goes_is_refused(tmp_path):
    (tmp_path / "f.txt").write_text("keep me")
    with pytest.raises(OutputError, match="is a file"):
        claim_output_dir(tmp_path / "f.txt", "train", overwrite=True)
    assert (tmp_path / "f.txt").read_text() == "keep me"


def test_legacy_outputs_without_a_marker_can_be_recognised(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "dataset.parquet").write_bytes(b"x")
    claim = claim_output_dir(out, "prepare", legacy=lambda p: (p / "dataset.parquet").exists())
    assert claim.state == "own"


def test_output_files(tmp_path):
    own = tmp_path / "predictions.csv"
    own.write_text("image,title\n")
    other = tmp_path / "notes.csv"
    other.write_text("mine\n")

    def is_own(path):
        return path.read_text().startswith("image,title")

    assert claim_output_file(own, "predict", is_own=is_own).state == "own"
    with pytest.raises(OutputError, match="not a `vlmtune predict` output"):
        claim_output_file(other, "predict", is_own=is_own)
    with pytest.raises(OutputError, match="is a folder"):
        claim_output_file(tmp_path, "predict", overwrite=True)
    with pytest.raises(OutputError, match="is a file, not a folder"):
        claim_output_file(other / "x.csv", "predict")
    assert other.read_text() == "mine\n"


def test_replace_dir_swaps_the_new_output_in_and_marks_it(tmp_path):
    out = tmp_path / "merged"
    with replace_dir(out, "merge", {"run": "r1"}) as staging:
        (staging / "model.safetensors").write_bytes(b"first")
    assert read_marker(out)["identity"] == {"run": "r1"}
    with replace_dir(out, "merge", {"run": "r2"}) as staging:
        (staging / "model.safetensors").write_bytes(b"second")
    assert (out / "model.safetensors").read_bytes() == b"second"
    assert read_marker(out)["identity"] == {"run": "r2"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]


def test_a_failed_replace_leaves_the_old_output_byte_identical(tmp_path):
    out = tmp_path / "merged"
    with replace_dir(out, "merge") as staging:
        (staging / "model.safetensors").write_bytes(b"old weights")
    before = _tree(out)
    with pytest.raises(RuntimeError), replace_dir(out, "merge") as staging:
        (staging / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("disk full")
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]


def test_staging_left_by_a_killed_run_is_removed_by_the_next_claim(tmp_path):
    out = tmp_path / "merged"
    dead = tmp_path / ".merged.vlmtune-staging-999999999"
    dead.mkdir()
    (dead / "half.bin").write_bytes(b"x")
    claim_output_dir(out, "merge")
    assert not dead.exists()


def test_the_marker_is_not_counted_as_content(tmp_path):
    out = tmp_path / "o"
    write_marker(out, "eval")
    assert (out / MARKER).is_file()
    assert claim_output_dir(out, "eval").state == "own"
