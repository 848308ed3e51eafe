"""``prepare_dataset`` against a real fault-injecting HTTP server on 127.0.0.1 and real files.

The fault matrix runs once (module fixture) and each test checks one aspect of
its outcome: kept rows are exactly the good ones, every fault ends with its
documented stage and reason kind, requests are made as the policy says.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from pathlib import Path

import pandas as pd
import pytest
from fault_server import (
    FaultServer,
    bomb_png,
    html_page,
    jpeg_bytes,
    ok,
    png_bytes,
    redirect,
    reset,
    sequence,
    status,
    too_many_bytes,
    truncated_body,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from prepare_helpers import failures, good_server, noisy_jpeg, run, write_catalog

from vlmtune.data.images import safe_stem
from vlmtune.data.prepare import PrepareArgs, PrepareError, check_unique_stems
from vlmtune.data.prepared import load_prepared

STORED_NAME = re.compile(r"^[A-Za-z0-9._-]*-[0-9a-f]{16}\.(jpg|png)$")


# --------------------------------------------------------------------------- the fault matrix

GOOD = {"good", "png_alpha", "flaky", "cdn_520", "timeout_408", "throttled", "wrong_type",
        "redirected", "dup_a", "dup_b"}  # fmt: skip
EXPECTED_FAILURES = {
    "missing": ("download", "http 404"),
    "forbidden": ("download", "http 403"),
    "slow": ("download", "timeout"),
    "truncated_body": ("download", "truncated body"),
    "reset": ("download", "connection error"),
    "too_big": ("download", "too large"),
    "too_big_stream": ("download", "too large"),
    "loop": ("download", "too many redirects"),
    "to_file": ("download", "bad redirect"),
    "to_metadata": ("download", "bad redirect"),
    "metadata_ip": ("download", "forbidden address"),
    "metadata_name": ("download", "forbidden address"),
    "truncated_jpeg": ("image", "truncated image"),
    "html": ("image", "html"),
    "garbage": ("image", "not an image"),
    "bomb": ("image", "decompression bomb"),
    "ftp": ("url", "unsupported scheme"),
    "file": ("url", "unsupported scheme"),
    "data": ("url", "unsupported scheme"),
    "js": ("url", "unsupported scheme"),
    "na": ("catalog", "missing image"),
}


def _matrix_routes(server: FaultServer) -> dict[str, str]:
    jpeg = noisy_jpeg()
    routes = {
        "good": ok(jpeg),
        "png_alpha": ok(png_bytes(), "image/png"),
        "flaky": sequence(status(500), ok(jpeg_bytes((1, 2, 3)))),
        "cdn_520": sequence(status(520), ok(jpeg_bytes((4, 5, 6)))),
        "timeout_408": sequence(status(408), ok(jpeg_bytes((7, 8, 9)))),
        "throttled": sequence(status(429, headers={"Retry-After": "1"}), ok(jpeg_bytes((9, 9, 9)))),
        "wrong_type": ok(jpeg_bytes((0, 200, 0)), "text/plain"),
        "redirected": redirect("/good.jpg"),
        "shared": ok(jpeg_bytes((50, 60, 70))),
        "missing": status(404),
        "forbidden": status(403),
        "slow": server.held(ok(jpeg)),  # answers only after the run: always a timeout
        "truncated_body": truncated_body(jpeg[:200], declared=len(jpeg)),
        "reset": reset(),
        "too_big": too_many_bytes(300_000),
        "too_big_stream": too_many_bytes(300_000, declare=False),
        "loop": redirect("/loop.jpg"),
        "to_file": redirect("file:///etc/passwd"),
        "to_metadata": redirect("http://169.254.169.254/latest/meta-data/"),
        "truncated_jpeg": ok(jpeg[: len(jpeg) // 2]),
        "html": ok(html_page(), "text/html"),
        "garbage": ok(b"\x00\x01not an image at all" * 20, "image/jpeg"),
        "bomb": ok(bomb_png(), "image/png"),
    }
    return {name: server.add(f"/{name}.jpg", behaviour) for name, behaviour in routes.items()}


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    root = tmp_path_factory.mktemp("matrix")
    with FaultServer() as server:
        urls = _matrix_routes(server)
        refs = {name: url for name, url in urls.items() if name != "shared"}
        refs.update(dup_a=urls["shared"], dup_b=urls["shared"])
        refs.update(ftp="ftp://127.0.0.1/a.jpg", file="file:///etc/passwd", na="N.A.",
                    data="data:image/png;base64,iVBORw0KGgo=", js="javascript:alert(1)",
                    metadata_ip="http://169.254.169.254/latest/meta-data/iam/",
                    metadata_name="http://metadata.google.internal/computeMetadata/v1/")  # fmt: skip
        catalog = write_catalog(root / "catalog.csv", sorted(refs.items()))
        waits: list[float] = []
        # 2 s: only the held "slow" row may time out, however loaded the machine
        report = run(
            catalog, root / "out", waits.append, concurrency=8, max_bytes=200_000, timeout=2.0
        )
        yield {"server": server, "out": root / "out", "report": report, "refs": refs,
               "waits": waits}  # fmt: skip


def test_matrix_keeps_exactly_the_good_rows(matrix):
    frame = load_prepared(matrix["out"]).frame
    assert set(frame["product_code"]) == GOOD
    assert matrix["report"].kept == len(GOOD)


@pytest.mark.parametrize("pid", sorted(EXPECTED_FAILURES))
def test_matrix_fault_has_its_documented_outcome(matrix, pid):
    assert failures(matrix["out"])[pid] == EXPECTED_FAILURES[pid]


def test_matrix_accounts_for_every_row(matrix):
    report = matrix["report"]
    assert set(failures(matrix["out"])) == set(EXPECTED_FAILURES)
    assert report.rows_read == len(matrix["refs"]) == report.kept + report.dropped
    assert report.dropped_by_reason["download/http 404"] == 1
    assert report.dropped_by_stage["url"] == 4 and report.dropped_by_stage["catalog"] == 1
    saved = json.loads((matrix["out"] / "prepare_report.json").read_text())
    assert saved["kept"] == report.kept and saved["images_per_second"] >= 0


def test_matrix_failures_keep_each_rows_image_reference(matrix):
    frame = pd.read_csv(matrix["out"] / "failures.csv", dtype=str, keep_default_na=False)
    assert dict(zip(frame["id"], frame["url"], strict=True)) == {
        pid: matrix["refs"][pid] for pid in EXPECTED_FAILURES
    }  # catalog rejects ("na": "N.A.") included


def test_matrix_request_policy(matrix):
    server = matrix["server"]
    assert (
        server.count("/missing.jpg") == 1 and server.count("/forbidden.jpg") == 1
    )  # no retry on 4xx
    assert server.count("/flaky.jpg") == 2 and server.count("/slow.jpg") == 2
    assert server.count("/cdn_520.jpg") == 2 and server.count("/timeout_408.jpg") == 2
    assert server.count("/shared.jpg") == 1  # a duplicate URL is fetched once
    assert server.count("/throttled.jpg") == 2
    # one wait per retried URL: Retry-After: 1 for the 429, jittered backoffs (0.02 s base) else
    retried = ("flaky", "cdn_520", "timeout_408", "throttled", "slow", "truncated_body", "reset")
    waits = sorted(matrix["waits"])
    assert len(waits) == len(retried) and waits[-1] == 1.0 and all(w < 0.03 for w in waits[:-1])
    # ftp/file/data/javascript and the metadata hosts: no request
    assert all(p.endswith(".jpg") for p in server.paths())


def test_matrix_metadata_hosts_are_refused_as_first_url_and_as_redirect(matrix):
    frame = pd.read_csv(matrix["out"] / "failures.csv", dtype=str).set_index("id")
    for pid in ("metadata_ip", "metadata_name"):
        assert frame.loc[pid, "reason"].startswith("forbidden address:")
    redirected = frame.loc["to_metadata", "reason"]
    assert redirected.startswith("bad redirect:") and "forbidden address:" in redirected
    assert (
        "169.254.169.254" in frame.loc["metadata_ip", "reason"] and "169.254.169.254" in redirected
    )


def test_matrix_stored_images_are_rgb_and_match_the_manifest(matrix):
    out = matrix["out"]
    data = load_prepared(out)
    for row, path in zip(data.frame.itertuples(), data.image_paths(), strict=True):
        assert not Path(row.local_image_path).is_absolute() and row.local_image_path.startswith(
            "images/"
        )
        assert hashlib.sha256(path.read_bytes()).hexdigest() == row.image_sha256
        with Image.open(path) as image:
            assert image.mode == "RGB" and image.size == (row.image_width, row.image_height)
    png = data.frame.set_index("product_code").loc["png_alpha", "local_image_path"]
    with Image.open(out / png) as image:
        assert png.endswith(".png") and image.getpixel((0, 0)) == (255, 255, 255)  # alpha on white
    good = data.frame.set_index("product_code").loc["good", "local_image_path"]
    assert (out / good).read_bytes() == noisy_jpeg()  # an unchanged JPEG is kept byte for byte
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(
        Path(p).name for p in data.frame["local_image_path"]
    )


# --------------------------------------------------------------------------- resume


def test_rerun_makes_no_request_for_stored_images(tmp_path):
    with FaultServer() as server:
        catalog = write_catalog(tmp_path / "c.csv", good_server(server, 12))
        first = run(catalog, tmp_path / "out")
        before = pd.read_parquet(tmp_path / "out" / "dataset.parquet")
        server.clear_log()
        second = run(catalog, tmp_path / "out")
        assert server.paths() == []
    assert first.downloaded == 12 and second.reused == 12 and second.downloaded == 0
    pd.testing.assert_frame_equal(before, pd.read_parquet(tmp_path / "out" / "dataset.parquet"))
    assert not (tmp_path / "out" / ".prepare_journal.jsonl").exists()


def test_rerun_retries_only_what_failed(tmp_path):
    with FaultServer() as server:
        rows = good_server(server, 8)
        for name in ("bad0", "bad1", "bad2"):
            rows.append((name, server.add(f"/{name}.jpg", status(503))))
        catalog = write_catalog(tmp_path / "c.csv", rows)
        first = run(catalog, tmp_path / "out", retries=0)
        assert first.kept == 8 and first.dropped_by_reason == {"download/http 503": 3}
        for name in ("bad0", "bad1", "bad2"):
            server.add(f"/{name}.jpg", ok(jpeg_bytes((7, 7, 7))))
        server.clear_log()
        second = run(catalog, tmp_path / "out", retries=0)
        assert sorted(server.paths()) == ["/bad0.jpg", "/bad1.jpg", "/bad2.jpg"]
    assert second.kept == 11 and second.reused == 8 and second.dropped == 0
    assert failures(tmp_path / "out") == {}


def test_rerun_fetches_again_an_image_whose_bytes_changed(tmp_path):
    with FaultServer() as server:
        catalog = write_catalog(tmp_path / "c.csv", good_server(server, 4))
        run(catalog, tmp_path / "out")
        frame = pd.read_parquet(tmp_path / "out" / "dataset.parquet").set_index("product_code")
        target = tmp_path / "out" / frame.loc["p2", "local_image_path"]
        target.write_bytes(b"tampered")
        server.clear_log()
        run(catalog, tmp_path / "out")
        assert server.paths() == ["/p2.jpg"]
    assert hashlib.sha256(target.read_bytes()).hexdigest() == frame.loc["p2", "image_sha256"]


def test_changed_image_settings_store_images_again(tmp_path):
    with FaultServer() as server:
        rows = [("big", server.add("/big.jpg", ok(noisy_jpeg(64))))]
        catalog = write_catalog(tmp_path / "c.csv", rows)
        run(catalog, tmp_path / "out")
        report = run(catalog, tmp_path / "out", max_side=16)
        assert server.count("/big.jpg") == 2
    frame = load_prepared(tmp_path / "out").frame
    assert report.reused == 0 and (frame["image_width"].iat[0], frame["image_height"].iat[0]) == (
        16,
        16,
    )


def test_rows_gone_from_the_catalog_lose_their_image_and_stale_temp_files_go(tmp_path):
    with FaultServer() as server:
        rows = good_server(server, 3)
        run(write_catalog(tmp_path / "c.csv", rows), tmp_path / "out")
        stale = tmp_path / "out" / "images" / ".p0-0123456789abcdef.jpg.x1y2.tmp"
        stale.write_bytes(b"half an image")
        report = run(write_catalog(tmp_path / "c.csv", rows[:2]), tmp_path / "out")
    assert report.pruned == 1 and report.reused == 2 and not stale.exists()
    assert len(list((tmp_path / "out" / "images").iterdir())) == 2


# --------------------------------------------------------------------------- safety


UNSAFE_IDS = ["../../etc/passwd", "/", "a\0b", "x" * 300, "a/b", "a_b", "a?b", "a:b", ".", "..",
              "CON", "ÿ漢字", "..\\..\\win", "A_B", "a b"]  # fmt: skip


def test_unsafe_product_ids_never_escape_images_folder(tmp_path):
    with FaultServer() as server:
        rows = [
            (pid, server.add(f"/i{i}.jpg", ok(jpeg_bytes((i, i, i)))))
            for i, pid in enumerate(UNSAFE_IDS)
        ]
        catalog = write_catalog(tmp_path / "cat" / "c.parquet", rows)
        report = run(catalog, tmp_path / "out")
    assert report.kept == len(UNSAFE_IDS)
    frame = load_prepared(tmp_path / "out").frame
    assert list(frame["product_code"]) == UNSAFE_IDS
    images = (tmp_path / "out" / "images").resolve()
    names = [Path(p).name for p in frame["local_image_path"]]
    assert len(set(names)) == len(UNSAFE_IDS)
    for rel in frame["local_image_path"]:
        path = (tmp_path / "out" / rel).resolve()
        assert path.parent == images and path.is_file()
        assert STORED_NAME.match(path.name) and len(path.name) <= 101
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat", "out"]
    assert sorted(p.name for p in (tmp_path / "cat").iterdir()) == ["c.parquet"]


def test_two_ids_sharing_a_file_name_stop_prepare_naming_both():
    check_unique_stems(["a", "b", "c"])  # the real stems differ
    with pytest.raises(PrepareError, match=r"'a' and 'b' map to the same image file name 'x'"):
        check_unique_stems(["a", "b"], stem=lambda product_id: "x")


@settings(max_examples=80, deadline=None)
@given(st.text(min_size=1, max_size=400), st.text(min_size=1, max_size=400))
def test_safe_stem_is_a_plain_bounded_unique_name(a, b):
    stem = safe_stem(a)
    assert re.fullmatch(r"[A-Za-z0-9._-]{0,80}-?[0-9a-f]{16}|id-[0-9a-f]{16}", stem)
    assert not stem.startswith(".") and stem not in {".", ".."}
    if a != b:
        assert safe_stem(a) != safe_stem(b)


def _local_layout(tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "cat"
    (folder / "images").mkdir(parents=True)
    (folder / "sub").mkdir()
    (folder / "images" / "a.jpg").write_bytes(jpeg_bytes((10, 20, 30)))
    (folder / "sub" / "b.png").write_bytes(png_bytes("RGB", color=(1, 2, 3)))
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(jpeg_bytes((90, 90, 90)))
    (folder / "link.jpg").symlink_to(outside)
    rows = [("a", "images/a.jpg"), ("b", "sub/b.png"), ("missing", "images/missing.jpg"),
            ("up", "../outside.jpg"), ("abs", str(outside)), ("link", "link.jpg"), ("dir", "sub")]  # fmt: skip
    return write_catalog(folder / "catalog.csv", rows), outside


def test_relative_local_paths_are_copied_and_escapes_refused(tmp_path):
    catalog, _ = _local_layout(tmp_path)
    report = run(catalog, tmp_path / "out")
    assert set(load_prepared(tmp_path / "out").frame["product_code"]) == {"a", "b"}
    assert report.copied == 2 and report.http_requests == 0
    assert failures(tmp_path / "out") == {
        "missing": ("local", "file not found"),
        "dir": ("local", "file not found"),
        "up": ("url", "path escapes the catalog folder"),
        "link": ("url", "path escapes the catalog folder"),
        "abs": ("url", "absolute path"),
    }


@pytest.mark.skipif(os.name == "nt", reason="Windows file names cannot hold a colon")
def test_relative_names_with_a_colon_are_paths_and_real_schemes_are_refused(tmp_path):
    folder = tmp_path / "cat"
    (folder / "x:y").mkdir(parents=True)
    (folder / "a:b.jpg").write_bytes(jpeg_bytes((1, 2, 3)))
    (folder / "x:y" / "c.jpg").write_bytes(jpeg_bytes((4, 5, 6)))
    refused = {"file": "file:/etc/passwd", "ftp": "ftp:a.jpg", "s3": "s3://bucket/a.jpg",
               "data": "data:image/png;base64,iVBORw0KGgo=", "js": "javascript:alert(1)"}  # fmt: skip
    rows = [("colon", "a:b.jpg"), ("colon_dir", "x:y/c.jpg"), *refused.items()]
    report = run(write_catalog(folder / "c.csv", rows), tmp_path / "out")
    assert set(load_prepared(tmp_path / "out").frame["product_code"]) == {"colon", "colon_dir"}
    assert report.copied == 2
    assert failures(tmp_path / "out") == {pid: ("url", "unsupported scheme") for pid in refused}


def test_allow_local_paths_reads_outside_the_catalog_folder(tmp_path):
    catalog, outside = _local_layout(tmp_path)
    run(catalog, tmp_path / "out", allow_local_paths=True)
    frame = load_prepared(tmp_path / "out").frame.set_index("product_code")
    assert set(frame.index) == {"a", "b", "up", "abs", "link"}
    assert frame.loc["abs", "image_sha256"] == hashlib.sha256(outside.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- images


def test_max_side_downsizes_and_max_pixels_refuses(tmp_path):
    folder = tmp_path / "cat"
    folder.mkdir()
    (folder / "wide.jpg").write_bytes(jpeg_bytes(size=(200, 50)))
    (folder / "cmyk.jpg").write_bytes(_cmyk_jpeg())
    (folder / "big.png").write_bytes(png_bytes("RGB", size=(300, 300), color=(5, 5, 5)))
    rows = [("wide", "wide.jpg"), ("cmyk", "cmyk.jpg"), ("big", "big.png")]
    run(write_catalog(folder / "c.csv", rows), tmp_path / "out", max_side=100, max_pixels=50_000)
    frame = load_prepared(tmp_path / "out").frame.set_index("product_code")
    assert (frame.loc["wide", "image_width"], frame.loc["wide", "image_height"]) == (100, 25)
    with Image.open(tmp_path / "out" / frame.loc["cmyk", "local_image_path"]) as image:
        assert image.mode == "RGB"
    assert failures(tmp_path / "out") == {"big": ("image", "decompression bomb")}


def _cmyk_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(buffer, format="JPEG")
    return buffer.getvalue()


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"source": ""}, "source is required"), ({"split": "0.5,0.5"}, "three parts"),
     ({"split": "0.9,0.2,0.1"}, "sum to 1"), ({"split": "a,b,c"}, "three numbers"),
     ({"concurrency": 0}, "concurrency"), ({"max_side": 0}, "max_side"), ({"timeout": 0}, "timeout")],
)  # fmt: skip
def test_prepare_args_are_validated(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        PrepareArgs(**{"source": "c.csv", "out": tmp_path, **overrides})


def test_prepare_args_accept_a_list_split(tmp_path):
    args = PrepareArgs(source="c.csv", out=tmp_path, split=[0.8, 0.1, 0.1])
    assert args.split == [0.8, 0.1, 0.1]


def test_exif_rotated_jpeg_is_stored_upright(tmp_path):
    folder = tmp_path / "cat"
    folder.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    buffer = io.BytesIO()
    Image.new("RGB", (40, 10), (200, 0, 0)).save(buffer, format="JPEG", exif=exif)
    (folder / "r.jpg").write_bytes(buffer.getvalue())
    run(write_catalog(folder / "c.csv", [("r", "r.jpg")]), tmp_path / "out")
    frame = load_prepared(tmp_path / "out").frame
    assert (frame["image_width"].iat[0], frame["image_height"].iat[0]) == (10, 40)


def test_progress_bar_shows_rate_and_eta(tmp_path, capsys):
    folder = tmp_path / "cat"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.jpg").write_bytes(jpeg_bytes((i, 0, 0)))
    catalog = write_catalog(folder / "c.csv", [(f"p{i}", f"{i}.jpg") for i in range(3)])
    run(catalog, tmp_path / "out", progress=True)
    err = capsys.readouterr().err
    assert "3/3" in err and "img/s" in err and "<" in err  # count, rate, elapsed<remaining
