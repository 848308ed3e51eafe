"""``vlmtune prepare`` as a command: flags, YAML config, clean errors, and kill-then-resume.

The kill tests run the real command in a subprocess against a server on
127.0.0.1 that answers the first images at once and holds the others until the
test has sent its signal, so the run is always caught mid-way, however fast the
machine. They check that no partial image is left under its final name and that
the next run ends with exactly the dataset of an uninterrupted run, without
fetching again what was stored.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from fault_server import Behaviour, FaultServer, jpeg_bytes, ok, status  # noqa: E402

from vlmtune.cli.main import main  # noqa: E402
from vlmtune.data.prepare import PrepareArgs, prepare_dataset  # noqa: E402
from vlmtune.data.prepared import load_prepared  # noqa: E402

N_SLOW = 40
N_FIRST = 8  # images served at once; the others wait for the test's signal


def _catalog(
    path: Path, refs: list[tuple[str, str]], id_col="product_code", image_col="imageurl"
) -> Path:
    frame = pd.DataFrame(
        {
            id_col: [pid for pid, _ in refs],
            "title": [f"Item {pid}" for pid, _ in refs],
            "category3_code": ["CAPS"] * len(refs),
            "full_price": ["350"] * len(refs),
            image_col: [ref for _, ref in refs],
        }
    )
    frame.to_csv(path, index=False)
    return path


def test_prepare_command_writes_the_dataset_and_a_summary(tmp_path, capsys):
    with FaultServer() as server:
        refs = [(f"p{i}", server.add(f"/{i}.jpg", ok(jpeg_bytes((i, 0, 0))))) for i in range(6)]
        refs.append(("gone", server.add("/gone.jpg", status(404))))
        catalog = _catalog(tmp_path / "c.csv", refs)
        code = main(["prepare", "--source", str(catalog), "--out", str(tmp_path / "out"), "--no-progress",
                     "--concurrency", "4", "--retries", "0", "--split", "0.5,0.25,0.25", "--seed", "7"])  # fmt: skip
    assert code == 0
    err = capsys.readouterr().err
    assert "kept" in err and "download/http 404" in err
    assert len(load_prepared(tmp_path / "out")) == 6
    report = json.loads((tmp_path / "out" / "prepare_report.json").read_text())
    assert report["kept"] == 6 and report["dropped_by_reason"] == {"download/http 404": 1}


def test_prepare_command_prints_the_conflicts_and_applies_on_conflict(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("COLUMNS", "200")  # the summary table on one line per row
    folder = tmp_path / "cat"
    folder.mkdir()
    (folder / "shared.jpg").write_bytes(jpeg_bytes((200, 30, 30)))
    (folder / "other.jpg").write_bytes(jpeg_bytes((30, 30, 200)))
    pd.DataFrame(
        {
            "product_code": ["a", "b", "c"],
            "title": ["Cap"] * 3,
            "category3_code": ["CAPS"] * 3,
            "full_price": ["350", "420", "350"],  # a and b share a photo, not a price
            "imageurl": ["shared.jpg", "shared.jpg", "other.jpg"],
        }
    ).to_csv(folder / "c.csv", index=False)
    out = tmp_path / "out"
    code = main(["prepare", "--source", str(folder / "c.csv"), "--out", str(out), "--no-progress",
                 "--on-conflict", "drop-group"])  # fmt: skip
    assert code == 0
    err = capsys.readouterr().err
    assert re.search(r"conflicting groups \(--on-conflict drop-group; conflicts.csv\)\s*│\s*1", err)
    assert re.search(r"rows dropped by --on-conflict\s*│\s*2", err)
    assert list(load_prepared(out).frame["product_code"]) == ["c"]
    conflicts = pd.read_csv(out / "conflicts.csv", dtype=str)
    assert sorted(zip(conflicts["product_code"], conflicts["full_price"], strict=True)) == [
        ("a", "350.0"),
        ("b", "420.0"),
    ]
    assert (out / "data_card.html").is_file()


def test_prepare_command_reads_yaml_config_and_overrides(tmp_path):
    folder = tmp_path / "cat"
    folder.mkdir()
    for i in range(4):  # distinct colours: not near duplicates (those share a split)
        (folder / f"{i}.jpg").write_bytes(jpeg_bytes((0, 60 * i, 0)))
    catalog = _catalog(
        folder / "c.csv", [(f"s{i}", f"{i}.jpg") for i in range(4)], "sku", "picture"
    )
    config = tmp_path / "prep.yaml"
    config.write_text(
        "columns:\n  id: sku\n  image: picture\nsplit: [0.5, 0.25, 0.25]\nprogress: false\n"
    )
    code = main(
        [
            "prepare",
            "--config",
            str(config),
            "--source",
            str(catalog),
            "--out",
            str(tmp_path / "out"),
            "seed=3",
        ]
    )
    assert code == 0
    data = load_prepared(tmp_path / "out")
    assert data.columns.id == "sku" and sorted(data.frame["sku"]) == ["s0", "s1", "s2", "s3"]
    assert sorted(data.frame["split"]) == ["test", "train", "train", "val"]


def test_image_and_split_flags_reach_the_run(tmp_path):
    folder = tmp_path / "cat"
    folder.mkdir()
    refs = []
    for i in range(8):
        Image.new("RGB", (64, 48), (30 * i, 0, 0)).save(folder / f"{i}.jpg")
        refs.append((f"s{i}", f"{i}.jpg"))
    outside = tmp_path / "elsewhere.jpg"  # an absolute path, refused unless allowed
    Image.new("RGB", (64, 48), (0, 0, 200)).save(outside)
    refs.append(("abs", str(outside)))
    noise = Image.frombytes("RGB", (200, 200), os.urandom(200 * 200 * 3))
    noise.save(folder / "big.png")  # ~120 KB: over --max-bytes
    refs.append(("big", "big.png"))
    catalog = _catalog(folder / "c.csv", refs)
    frame = pd.read_csv(catalog)
    frame["category3_code"] = ["CAPS", "BAGS"] * 4 + ["OTHER"] * 2
    frame.to_csv(catalog, index=False)

    def prepare(out: str, *flags: str) -> pd.DataFrame:
        args = ["prepare", "--source", str(catalog), "--out", str(tmp_path / out), "--no-progress"]
        assert main([*args, "--max-side", "32", "--max-bytes", "60000", *flags]) == 0
        return pd.read_csv(tmp_path / out / "failures.csv", dtype=str).set_index("id")

    failures = prepare("refused")
    assert failures.loc["abs", "stage"] == "url" and failures.loc["big", "stage"] == "local"
    failures = prepare("allowed", "--allow-local-paths", "--stratify", "category3_code",
                       "--split", "0.5,0.25,0.25")  # fmt: skip
    assert list(failures.index) == ["big"]
    data = load_prepared(tmp_path / "allowed").frame.set_index("product_code")
    assert "abs" in data.index and max(data["image_width"].max(), data["image_height"].max()) == 32
    counts = data[data["category3_code"] != "OTHER"].groupby(["category3_code", "split"]).size()
    assert counts.to_dict() == {
        ("BAGS", "test"): 1,
        ("BAGS", "train"): 2,
        ("BAGS", "val"): 1,
        ("CAPS", "test"): 1,
        ("CAPS", "train"): 2,
        ("CAPS", "val"): 1,
    }  # fmt: skip  (4 rows each at 0.5/0.25/0.25: exact per stratum)


def test_missing_source_is_a_configuration_error(tmp_path, capsys):
    assert main(["prepare", "--out", str(tmp_path / "out")]) == 2
    assert "source is required" in capsys.readouterr().err


def test_hub_dataset_name_fails_at_once_when_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("datasets.config.HF_DATASETS_CACHE", str(tmp_path / "cache"))  # empty
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    # "at once" means: no connection attempt and no call into datasets' (retrying) hub loader
    attempts: list[object] = []

    def no_network(*args, **kwargs):
        attempts.append(args)
        raise OSError("the test forbids network access here")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr("datasets.load_dataset", no_network)
    code = main(
        [
            "prepare",
            "--source",
            "DBQ/Burberry.Product.prices.United.States",
            "--out",
            "out",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and attempts == []
    assert "offline" in err and "local" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing is created before the catalog is read


def test_the_missing_column_advice_is_an_override_that_works(tmp_path, capsys):
    folder = tmp_path / "cat"
    folder.mkdir()
    (folder / "0.jpg").write_bytes(jpeg_bytes())
    catalog = _catalog(folder / "c.csv", [("s0", "0.jpg")], image_col="picture")
    args = ["prepare", "--source", str(catalog), "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "imageurl" in err and "picture" in err and "Traceback" not in err
    advice = re.search(r"e\.g\. (columns\.\w+=\w+)", err)  # the guessed column, ready to paste
    assert advice and advice.group(1) == "columns.image=picture", err
    assert main([*args, advice.group(1)]) == 0  # the advice, followed literally
    assert list(load_prepared(tmp_path / "out").frame["picture"]) == ["0.jpg"]


def test_unknown_catalog_file_is_reported(tmp_path, capsys):
    code = main(["prepare", "--source", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "out")])
    assert code == 2 and "does not exist" in capsys.readouterr().err


# --------------------------------------------------------------------------- kill, then resume


class _Gate:
    """The images after the first ``N_FIRST`` of the kill tests.

    ``open``: served at once (the uninterrupted run, the resume). ``hold``: each
    request waits until :meth:`release`, which answers the waiting ones and
    refuses every later one at once (503). So a run that is slow to notice its
    SIGINT cannot fetch past the two requests it had in flight, and the test
    does not depend on how fast the signal is handled.
    """

    def __init__(self) -> None:
        self.state = "open"
        self.released = threading.Event()

    def release(self) -> None:
        self.state = "refuse"  # first: a request arriving from now on must not wait
        self.released.set()

    def behaviour(self, then: Behaviour) -> Behaviour:
        def behave(handler, n: int) -> None:
            if self.state == "hold":
                self.released.wait(timeout=300)
            elif self.state == "refuse":
                return status(503)(handler, n)
            then(handler, n)

        return behave


def _slow_catalog(server: FaultServer, gate: _Gate, folder: Path) -> Path:
    """``N_SLOW`` images: the first ``N_FIRST`` answered at once, the rest behind ``gate``.

    With 2 workers taking jobs in catalog order, a run with the gate on ``hold``
    stores exactly the first ``N_FIRST`` images, then waits on two held requests.
    """
    refs = []
    for i in range(N_SLOW):
        body = ok(jpeg_bytes((i * 5 % 256, 100, 200), size=(48, 40)))
        behaviour = body if i < N_FIRST else gate.behaviour(body)
        refs.append((f"item-{i:03d}", server.add(f"/s{i}.jpg", behaviour)))
    folder.mkdir(parents=True, exist_ok=True)
    return _catalog(folder / "catalog.csv", refs)


def _args(catalog: Path, out: Path) -> list[str]:
    return ["prepare", "--source", str(catalog), "--out", str(out), "--no-progress",
            "--concurrency", "2", "--per-host", "2", "--timeout", "60"]  # fmt: skip


# The real entry point: `vlmtune prepare` imports only the prepare verb (verbs load lazily), and
# Ctrl-C ends it with exit code 130 and the resume advice. Ctrl-C in a terminal reaches a process
# whose SIGINT is the default; a suite started in the background (`make test &`) hands its
# children SIGINT ignored, and Python then installs no KeyboardInterrupt handler. So the child
# starts as a terminal would start it.
_PREPARE_ONLY = (
    "import signal, sys\n"
    "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
    "from vlmtune.cli.main import main\n"
    "sys.exit(main())"
)


def _start_and_stop(
    catalog: Path, out: Path, sig: int, server: FaultServer, gate: _Gate
) -> subprocess.CompletedProcess:
    """Run prepare until it has journaled the ``N_FIRST`` images, signal it, then release the gate.

    The held images cannot arrive before the signal is sent, so the run is
    always stopped mid-way; releasing them afterwards lets a SIGINT-ed run end
    its in-flight requests at once instead of waiting for their read timeout.
    """
    gate.state = "hold"
    cmd = [sys.executable, "-c", _PREPARE_ONLY, *_args(catalog, out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        server.wait_until(lambda paths, inflight: len(paths) >= N_FIRST + 2 and inflight == 2)
        _wait_for_journal(out, N_FIRST, proc)
        assert proc.poll() is None, f"the run ended before the signal: {proc.communicate()}"
        proc.send_signal(sig)
    finally:
        gate.release()
    stdout, stderr = proc.communicate(timeout=120)
    gate.state = "open"  # for the resume
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def _wait_for_journal(out: Path, lines: int, proc: subprocess.Popen) -> None:
    """Block until the journal holds ``lines`` records, which the run must reach (not a race:
    the held images cannot add more); gives up if the run ends or after about two minutes."""
    for _ in range(12_000):
        if _journaled(out) >= lines:
            break
        try:
            proc.wait(timeout=0.01)
            break  # the run ended early: the assertion below reports it
        except subprocess.TimeoutExpired:
            pass
    assert _journaled(out) == lines


def _check_no_partial_image(out: Path) -> int:
    """Every file under its final name is a complete image; return how many there are."""
    finals = [p for p in (out / "images").iterdir() if not p.name.startswith(".")]
    for path in finals:
        with Image.open(io.BytesIO(path.read_bytes())) as image:
            image.load()
    assert not (out / "dataset.parquet").exists()  # the manifest is written only at the end
    return len(finals)


def _journaled(out: Path) -> int:
    journal = out / ".prepare_journal.jsonl"
    lines = journal.read_text(encoding="utf-8").splitlines() if journal.exists() else []
    return sum(1 for line in lines if line.endswith("}"))


def _resume_and_compare(
    catalog: Path, out: Path, reference: Path, server: FaultServer, stored: int
) -> None:
    journaled = _journaled(out)
    assert stored - 3 <= journaled <= stored  # only images in flight (or torn) may be unrecorded
    server.clear_log()
    assert main(_args(catalog, out)) == 0
    report = json.loads((out / "prepare_report.json").read_text())
    assert report["kept"] == N_SLOW and report["reused"] == journaled
    assert len(server.paths()) == N_SLOW - journaled  # nothing recorded as stored is fetched again
    pd.testing.assert_frame_equal(
        pd.read_parquet(out / "dataset.parquet"), pd.read_parquet(reference / "dataset.parquet")
    )
    assert sorted(os.listdir(out / "images")) == sorted(os.listdir(reference / "images"))
    for name in os.listdir(reference / "images"):
        assert (out / "images" / name).read_bytes() == (reference / "images" / name).read_bytes()
    assert not (out / ".prepare_journal.jsonl").exists()


@pytest.fixture
def slow_setup(tmp_path):
    with FaultServer() as server:
        gate = _Gate()
        catalog = _slow_catalog(server, gate, tmp_path / "cat")
        reference = tmp_path / "reference"
        prepare_dataset(
            PrepareArgs(
                source=str(catalog), out=reference, concurrency=8, per_host=8, progress=False
            )
        )
        server.clear_log()
        yield server, gate, catalog, tmp_path / "out", reference


@pytest.mark.slow
def test_sigint_mid_run_then_resume_gives_the_uninterrupted_result(slow_setup):
    server, gate, catalog, out, reference = slow_setup
    stopped = _start_and_stop(catalog, out, signal.SIGINT, server, gate)
    assert stopped.returncode == 130, stopped.stderr
    assert "interrupted" in stopped.stderr and "Traceback" not in stopped.stderr
    assert not [p for p in (out / "images").iterdir() if p.name.endswith(".tmp")]
    stored = _check_no_partial_image(out)
    assert N_FIRST <= stored <= N_FIRST + 2  # the two in flight may land as it stops, no more
    _resume_and_compare(catalog, out, reference, server, stored)


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_gives_the_uninterrupted_result(slow_setup):
    server, gate, catalog, out, reference = slow_setup
    stopped = _start_and_stop(catalog, out, signal.SIGKILL, server, gate)
    assert stopped.returncode == -signal.SIGKILL
    stored = _check_no_partial_image(out)
    assert stored == N_FIRST  # killed while the rest were held: nothing else could be stored
    # a kill can land mid-line: cut the last journal record in half, as such a kill leaves it
    journal = out / ".prepare_journal.jsonl"
    text = journal.read_text(encoding="utf-8")
    journal.write_text(text[: len(text) - len(text.splitlines()[-1]) // 2 - 1], encoding="utf-8")
    assert _journaled(out) == N_FIRST - 1
    _resume_and_compare(catalog, out, reference, server, stored)
