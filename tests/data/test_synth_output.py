"""Where ``synth`` and ``serve-images`` may work: output folder policy, atomic replace, busy port."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from vlmtune.data.synthetic import ServeError, SynthArgs, generate_catalog, serve_directory
from vlmtune.utils.errors import UserError
from vlmtune.utils.outputs import MARKER, OutputError, read_marker

SMALL = {"image_size": "64x80", "workers": 1}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_synth_refuses_a_folder_holding_a_catalog(tmp_path):
    folder = tmp_path / "shop"
    (folder / "images").mkdir(parents=True)
    (folder / "catalog.csv").write_text("product_code,title\nA1,My real product\n")
    (folder / "images" / "A1.jpg").write_bytes(b"my photo")
    before = snapshot(folder)
    with pytest.raises(OutputError, match=r"is not empty.*catalog.csv, images.*--overwrite"):
        generate_catalog(SynthArgs(out=folder, n=5, **SMALL))
    assert snapshot(folder) == before


def test_synth_out_naming_a_file_is_a_one_line_user_error(tmp_path):
    (tmp_path / "catalog.csv").write_text("keep me")
    with pytest.raises(OutputError, match="is a file; synth writes a folder there") as err:
        generate_catalog(SynthArgs(out=tmp_path / "catalog.csv", n=5, **SMALL))
    assert isinstance(err.value, UserError) and "\n" not in str(err.value)
    assert (tmp_path / "catalog.csv").read_text() == "keep me"


def test_synth_over_its_own_output_replaces_it_whole(tmp_path):
    out = tmp_path / "cat"
    generate_catalog(SynthArgs(out=out, n=30, broken_frac=0.0, **SMALL))
    assert read_marker(out)["verb"] == "synth"
    generate_catalog(SynthArgs(out=out, n=6, seed=1, broken_frac=0.0, **SMALL))
    images = sorted(p.name for p in (out / "images").iterdir())
    assert len(images) == 6 and all(name.startswith("81") for name in images)  # seed 1's codes
    assert len((out / "catalog.csv").read_text().splitlines()) == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat"]  # no staging folder left


def test_a_synth_output_from_before_markers_is_replaced_but_not_one_with_user_files(tmp_path):
    out = tmp_path / "cat"
    generate_catalog(SynthArgs(out=out, n=4, **SMALL))
    (out / MARKER).unlink()  # as synth wrote it before markers existed
    generate_catalog(SynthArgs(out=out, n=3, **SMALL))
    assert len((out / "catalog.csv").read_text().splitlines()) == 4
    (out / MARKER).unlink()
    (out / "my notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="my notes.txt"):
        generate_catalog(SynthArgs(out=out, n=3, **SMALL))
    assert (out / "my notes.txt").read_text() == "mine"


def test_an_interrupted_synth_leaves_the_earlier_catalog_whole(tmp_path, monkeypatch):
    out = tmp_path / "cat"
    generate_catalog(SynthArgs(out=out, n=8, **SMALL))
    before = snapshot(out)

    def ctrl_c(*_args, **_kwargs):  # Ctrl-C after every image of the new catalog is drawn
        raise KeyboardInterrupt

    monkeypatch.setattr("vlmtune.data.synthetic.generate._write_csv", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        generate_catalog(SynthArgs(out=out, n=12, seed=5, **SMALL))
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat"]


def test_overwrite_replaces_a_foreign_folder(tmp_path):
    folder = tmp_path / "scratch"
    folder.mkdir()
    (folder / "old.txt").write_text("x")
    generate_catalog(SynthArgs(out=folder, n=4, overwrite=True, **SMALL))
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [MARKER, "catalog.csv", "images", "synth_report.json"]
    )


def test_synth_out_is_required_and_may_be_the_current_folder(tmp_path, monkeypatch):
    from vlmtune.utils.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match="out"):
        config_from_dict(SynthArgs, {"n": 3})
    with pytest.raises(ConfigError, match="out is required"):
        config_from_dict(SynthArgs, {"out": " ", "n": 3})
    monkeypatch.chdir(tmp_path)  # an empty working folder is filled in place
    generate_catalog(SynthArgs(out=Path("."), n=3, **SMALL))
    assert (tmp_path / "catalog.csv").is_file() and read_marker(tmp_path)["verb"] == "synth"
    with pytest.raises(OutputError, match="folder you are working in"):  # never swapped away
        generate_catalog(SynthArgs(out=Path("."), n=3, **SMALL))
    assert (tmp_path / "catalog.csv").is_file()


def test_serve_images_on_a_busy_port_names_the_port_and_the_fix(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        busy_port = pytest.raises(ServeError, match=rf"port {port} on 127.0.0.1 is already in use")
        with busy_port as err, serve_directory(tmp_path, port=port):
            pass
    assert "--port 0" in str(err.value) and isinstance(err.value, UserError)
