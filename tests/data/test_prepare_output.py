"""The output folder of ``prepare``: claimed before any work, locked, replaced only atomically.

Each refusal leaves every byte that was there in place and makes no request; a
second run of the same command resumes; ``--overwrite`` replaces an earlier
output of another catalog by building beside it and swapping.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pandas as pd
import pytest
from fault_server import FaultServer, jpeg_bytes, ok, status
from prepare_helpers import good_server, run, write_catalog

from vlmtune.data.catalog import CatalogError
from vlmtune.data.prepare import NothingKeptError, PrepareError
from vlmtune.data.prepared import load_prepared
from vlmtune.utils.errors import RunFailure, UserError
from vlmtune.utils.outputs import MARKER, OutputError, read_marker


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes)."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture
def server():
    with FaultServer() as srv:
        yield srv


def test_a_foreign_folder_is_refused_before_any_work(tmp_path, server):
    catalog = write_catalog(tmp_path / "c.csv", good_server(server, 3))
    out = tmp_path / "mine"
    out.mkdir()
    (out / "dataset.csv").write_text("my own spreadsheet\n")
    (out / "notes.txt").write_text("do not lose")
    before = snapshot(out)
    with pytest.raises(OutputError, match=r"is not empty.*dataset.csv, notes.txt.*--overwrite"):
        run(catalog, out)
    assert snapshot(out) == before and server.paths() == []


def test_out_naming_a_file_is_a_one_line_error(tmp_path):
    catalog = write_catalog(tmp_path / "c.csv", [("a", "a.jpg")])
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file") as err:
        run(catalog, tmp_path / "file")
    assert "\n" not in str(err.value) and (tmp_path / "file").read_text() == "x"


def test_the_catalogs_own_folder_is_refused_even_with_overwrite(tmp_path):
    catalog = write_catalog(tmp_path / "cat" / "c.csv", [("a", "a.jpg")])
    before = snapshot(tmp_path / "cat")
    with pytest.raises(OutputError, match="contains the catalog.*even with --overwrite"):
        run(catalog, tmp_path / "cat", overwrite=True)
    assert snapshot(tmp_path / "cat") == before


def test_another_catalog_into_an_earlier_output_is_refused_and_nothing_changes(tmp_path, server):
    first = write_catalog(tmp_path / "a.csv", good_server(server, 4))
    run(first, tmp_path / "out")
    before = snapshot(tmp_path / "out")
    second = write_catalog(tmp_path / "b.csv", [("q0", server.add("/q0.jpg", ok(jpeg_bytes())))])
    server.clear_log()
    with pytest.raises(OutputError, match=r"made from catalog=.*a\.csv, not from catalog=.*b\.csv"):
        run(second, tmp_path / "out")
    assert snapshot(tmp_path / "out") == before and server.paths() == []


def test_overwrite_replaces_an_earlier_output_of_another_catalog(tmp_path, server):
    run(write_catalog(tmp_path / "a.csv", good_server(server, 4)), tmp_path / "out")
    rows = [(f"q{i}", server.add(f"/q{i}.jpg", ok(jpeg_bytes((9, i, 9))))) for i in range(2)]
    second = write_catalog(tmp_path / "b.csv", rows)
    report = run(second, tmp_path / "out", overwrite=True)
    frame = load_prepared(tmp_path / "out").frame
    assert sorted(frame["product_code"]) == ["q0", "q1"] and report.reused == 0
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "out" / "images").iterdir()) == [
        "q0", "q1"
    ]  # fmt: skip
    marker = read_marker(tmp_path / "out")
    assert marker["verb"] == "prepare"
    assert marker["identity"] == {"catalog": str((tmp_path / "b.csv").resolve())}
    assert [p.name for p in tmp_path.iterdir() if "staging" in p.name] == []
    server.clear_log()
    assert run(second, tmp_path / "out").reused == 2 and server.paths() == []  # then it resumes


def test_an_interrupted_overwrite_leaves_the_earlier_output_whole(tmp_path, server):
    run(write_catalog(tmp_path / "a.csv", good_server(server, 4)), tmp_path / "out")
    before = snapshot(tmp_path / "out")
    rows = [(f"q{i}", server.add(f"/q{i}.jpg", status(503))) for i in range(3)]
    second = write_catalog(tmp_path / "b.csv", rows)

    def ctrl_c(_seconds: float) -> None:  # Ctrl-C during the first backoff wait
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(second, tmp_path / "out", ctrl_c, overwrite=True, concurrency=1)
    assert snapshot(tmp_path / "out") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "b.csv", "out"]  # no staging


def test_an_output_from_before_markers_is_resumed_or_refused_by_its_catalog(tmp_path, server):
    first = write_catalog(tmp_path / "a.csv", good_server(server, 3))
    run(first, tmp_path / "out")
    (tmp_path / "out" / MARKER).unlink()  # what prepare wrote before markers existed
    server.clear_log()
    assert run(first, tmp_path / "out").reused == 3 and server.paths() == []
    (tmp_path / "out" / MARKER).unlink()
    before = snapshot(tmp_path / "out")
    second = write_catalog(tmp_path / "b.csv", [("z", "z.jpg")])
    with pytest.raises(OutputError, match=r"made from .*a\.csv.*not from .*b\.csv.*--overwrite"):
        run(second, tmp_path / "out")
    assert snapshot(tmp_path / "out") == before


def test_a_second_prepare_on_the_same_folder_is_refused_while_the_first_runs(tmp_path, server):
    rows = [(f"h{i}", server.add(f"/h{i}.jpg", server.held(ok(jpeg_bytes((i, 0, 0))))))
            for i in range(3)]  # fmt: skip
    catalog = write_catalog(tmp_path / "c.csv", rows)
    outcome: list[object] = []
    # a long timeout: the held requests must outlast the second run however loaded the machine
    first = threading.Thread(
        target=lambda: outcome.append(run(catalog, tmp_path / "out", timeout=120.0))
    )
    first.start()
    try:
        server.wait_until(lambda paths, _inflight: len(paths) >= 1)  # the first run is fetching
        with pytest.raises(PrepareError, match="another `vlmtune prepare` is writing to") as err:
            run(catalog, tmp_path / "out")
        assert "wait for it to end" in str(err.value) and isinstance(err.value, UserError)
    finally:
        server.go.set()
        first.join(timeout=120)
    assert outcome[0].kept == 3 and len(load_prepared(tmp_path / "out")) == 3


def test_a_header_only_catalog_is_an_error_naming_the_file(tmp_path):
    catalog = tmp_path / "empty.csv"
    catalog.write_text("product_code,title,category3_code,full_price,imageurl\n")
    with pytest.raises(CatalogError, match=r"'.*empty\.csv' has no rows"):
        run(catalog, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_run_that_keeps_no_row_ends_with_a_clear_error_and_failures_csv(tmp_path, server):
    rows = [(f"g{i}", server.add(f"/g{i}.jpg", status(404))) for i in range(3)] + [("na", "N.A.")]
    catalog = write_catalog(tmp_path / "c.csv", rows)
    with pytest.raises(
        NothingKeptError, match=r"kept none of the 4 rows.*3 download/http 404"
    ) as err:
        run(catalog, tmp_path / "out")
    assert isinstance(err.value, RunFailure) and "failures.csv' lists every row" in str(err.value)
    frame = pd.read_csv(tmp_path / "out" / "failures.csv", dtype=str)
    assert sorted(frame["id"]) == ["g0", "g1", "g2", "na"]
    assert not (tmp_path / "out" / "dataset.parquet").exists()


def test_a_torn_last_journal_line_does_not_stop_the_resume(tmp_path, server, caplog):
    rows = good_server(server, 4)
    catalog = write_catalog(tmp_path / "c.csv", rows)
    run(catalog, tmp_path / "ref")
    # What a run killed after storing three images leaves: the marker, the images and a
    # journal whose third line was cut mid-record.
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    frame = load_prepared(tmp_path / "ref").frame
    lines = []
    for rec in frame.head(3).to_dict("records"):
        (out / rec["local_image_path"]).write_bytes(
            (tmp_path / "ref" / rec["local_image_path"]).read_bytes()
        )
        lines.append(json.dumps({
            "id": rec["product_code"], "ref": rec["imageurl"], "path": rec["local_image_path"],
            "sha256": rec["image_sha256"], "width": rec["image_width"], "height": rec["image_height"],
            "settings": {"max_side": None, "max_pixels": 40_000_000},
        }))  # fmt: skip
    torn = "\n".join(lines)[: -len(lines[-1]) // 2]
    (out / ".prepare_journal.jsonl").write_text(torn)
    (out / MARKER).write_text((tmp_path / "ref" / MARKER).read_text())
    server.clear_log()
    report = run(catalog, out)
    assert report.kept == 4 and report.reused == 2  # the torn record's image is fetched again
    assert sorted(server.paths()) == sorted(f"/{pid}.jpg" for pid, _ in rows[2:])
    assert "cut short" in caplog.text
    pd.testing.assert_frame_equal(load_prepared(out).frame, frame)
