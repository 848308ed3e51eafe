"""Nothing a user types destroys their work (issue 12), through the real command line.

One pipeline is built once with the verbs themselves (synth -> prepare -> init-model ->
train -> eval -> predict -> merge). Then every ordinary mistake found by trying the tool
as a new user, and a sweep of ``--out`` pointed at each other verb's output, at an input
of the same command, at a file and at a foreign folder, is run through ``main()``. Each
must end with its exit code and a one-line message naming the cause, print no traceback,
and leave every pre-existing file of the pipeline byte-identical.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest

from tiny_model import tiny_overrides
from vlmtune.cli.main import main

SIZES = tiny_overrides()
TRAIN = ["train.max_steps=2", "train.per_device_batch_size=4", "train.eval_steps=0",
         "train.save_steps=2", "train.report_to=none", "model.num_crops=1"]  # fmt: skip


@dataclass(frozen=True)
class Pipeline:
    root: Path
    catalog: Path
    data: Path
    base: Path
    run: Path
    eval: Path
    predictions: Path
    merged: Path
    photo: Path
    notes: Path
    foreign: Path


def _ok(argv: list[str]) -> None:
    assert main(argv) == 0, argv


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    root = tmp_path_factory.mktemp("mistakes")
    _ok(["synth", "--out", str(root / "synth"), "--n", "24", "image_size=112x140",
         "broken_frac=0", "workers=1"])  # fmt: skip
    catalog = root / "synth" / "catalog.csv"
    _ok(["prepare", "--source", str(catalog), "--out", str(root / "data"), "--no-progress"])
    _ok(["init-model", "--data", str(root / "data"), "--out", str(root / "base"), *SIZES])
    _ok(["train", "--model", str(root / "base"), "--data", str(root / "data"),
         "--out", str(root / "run"), *TRAIN])  # fmt: skip
    _ok(["eval", "--model", str(root / "run"), "--data", str(root / "data"), "--limit", "2",
         "--out", str(root / "eval"), "inference.generation.max_new_tokens=8"])  # fmt: skip
    photo = next((root / "data" / "images").iterdir())
    _ok(["predict", str(photo), "--model", str(root / "run"), "--out", str(root / "p.csv"),
         "inference.generation.max_new_tokens=8"])  # fmt: skip
    _ok(["merge", str(root / "run"), "--out", str(root / "merged")])
    notes = root / "notes.txt"
    notes.write_text("my notes\n")
    foreign = root / "mine"
    foreign.mkdir()
    (foreign / "dataset.csv").write_text("my,own\n1,2\n")
    (foreign / "catalog.csv").write_text("title\nmine\n")
    return Pipeline(root, catalog, root / "data", root / "base", root / "run", root / "eval",
                    root / "p.csv", root / "merged", photo, notes, foreign)  # fmt: skip


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _refused(pipeline: Pipeline, capsys, argv: list[str], cause: str, code: int = 2) -> str:
    """Run ``argv``; assert the exit code, one message line naming ``cause``, no traceback, and
    every file of the pipeline byte-identical; return the message."""
    capsys.readouterr()
    before = _snapshot(pipeline.root)
    assert main(argv) == code, argv
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(f"vlmtune {argv[0]}: ")]
    assert len(lines) == 1, err
    assert re.search(cause, lines[0]), (cause, lines[0])
    assert _snapshot(pipeline.root) == before, f"{argv} changed files"
    return lines[0]


def _p(pipeline: Pipeline, name: str) -> str:
    return str(getattr(pipeline, name))


# --------------------------------------------------------------------------- the found cases

CASES = {
    "merge into the run being merged": (
        ["merge", "{run}", "--out", "{run}"], r"is the run being merged.*even with --overwrite"),
    "merge into the base model": (
        ["merge", "{run}", "--out", "{base}", "--overwrite"], r"is its base model"),
    "init-model over a trained model": (
        ["init-model", "--data", "{data}", "--out", "{merged}", *SIZES],
        r"holds the output of `vlmtune merge`"),
    "synth over a folder holding a catalog": (
        ["synth", "--out", "{foreign}", "--n", "60"], r"catalog\.csv.*--overwrite"),
    "synth into a file": (["synth", "--out", "{notes}"], r"is a file"),
    "prepare into a foreign folder": (
        ["prepare", "--source", "{catalog}", "--out", "{foreign}"], r"dataset\.csv.*--overwrite"),
    "prepare of another catalog into an earlier output": (
        ["prepare", "--source", "{foreign}/catalog.csv", "--out", "{data}"],
        r"earlier `vlmtune prepare` output made from"),
    "resume in another mode": (
        ["train", "--model", "{base}", "--data", "{data}", "--out", "{run}", "--resume", "auto",
         "--mode", "full", *TRAIN], r"train\.mode: the run .* lora.*full"),
    "train into a file": (
        ["train", "--model", "{base}", "--data", "{data}", "--out", "{notes}", *TRAIN],
        r"is a file"),
    "eval into a file": (
        ["eval", "--model", "{run}", "--data", "{data}", "--out", "{notes}"], r"is a file"),
    "predict into a folder": (
        ["predict", "{photo}", "--model", "{run}", "--out", "{eval}"], r"is a folder"),
    "eval with a mistyped base model": (
        ["eval", "--model", "{run}", "--data", "{data}", "--base-model", "{root}/bsae"],
        r"--base-model .*bsae.* does not exist"),
    "eval on a CPU-only torch with --device cuda": (
        ["eval", "--model", "{run}", "--data", "{data}", "--device", "cuda:99"],
        r"--device 'cuda:99'"),
    "predict with --device gpu0": (
        ["predict", "{photo}", "--model", "{run}", "--device", "gpu0"], r"'gpu0' is not a device"),
    "init-model from a missing folder": (
        ["init-model", "--data", "{root}/nowhere", "--out", "{root}/m1", *SIZES],
        r"does not exist"),
    "init-model from an empty folder": (
        ["init-model", "--data", "{root}/empty", "--out", "{root}/m2", *SIZES],
        r"empty folder"),
    "init-model with a negative size": (
        ["init-model", "--data", "{data}", "--out", "{root}/m3", *SIZES, "hidden_size=-6"],
        r"hidden_size"),
    "init-model without layers": (
        ["init-model", "--data", "{data}", "--out", "{root}/m4", *SIZES, "num_hidden_layers=0"],
        r"num_hidden_layers"),
    "the top level of an unknown key": (["prepare", "--source", "{catalog}", "colums.image=x"],
                                        r"unknown key 'colums"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_found_mistake_is_one_line_and_destroys_nothing(pipeline, capsys, case):
    (pipeline.root / "empty").mkdir(exist_ok=True)
    argv, cause = CASES[case]
    fields = {name: _p(pipeline, name) for name in Pipeline.__dataclass_fields__}
    _refused(pipeline, capsys, [a.format(**fields) for a in argv], cause)


def test_a_model_folder_without_weights_or_truncated_is_named(pipeline, capsys, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (broken / name).write_bytes((pipeline.merged / name).read_bytes())
    argv = ["eval", "--model", str(broken), "--data", str(pipeline.data)]
    _refused(pipeline, capsys, argv, r"has no weights: model\.safetensors is missing")
    weights = (pipeline.merged / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    _refused(pipeline, capsys, argv, r"model\.safetensors in .* is truncated")
    train = ["train", "--model", str(broken), "--data", str(pipeline.data),
             "--out", str(tmp_path / "r"), *TRAIN]  # fmt: skip
    _refused(pipeline, capsys, train, r"model\.path \(--model\): .*truncated")


def test_serve_images_on_a_busy_port(pipeline, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        argv = ["serve-images", str(pipeline.root / "synth"), "--port", str(port)]
        _refused(pipeline, capsys, argv, rf"port {port}.*--port 0")


def test_the_missing_column_hint_is_an_override_that_works(pipeline, capsys, tmp_path):
    shutil.copytree(pipeline.catalog.parent / "images", tmp_path / "images")
    renamed = tmp_path / "renamed.csv"
    text = pipeline.catalog.read_text(encoding="utf-8")
    renamed.write_text(text.replace("imageurl", "picture", 1), encoding="utf-8")
    out = tmp_path / "d"
    message = _refused(
        pipeline, capsys, ["prepare", "--source", str(renamed), "--out", str(out)], r"imageurl"
    )
    hint = re.search(r"(columns\.\w+=\w+)", message).group(1)
    assert hint == "columns.image=picture"
    assert (
        main(["prepare", "--source", str(renamed), "--out", str(out), hint, "--no-progress"]) == 0
    )


def test_a_header_only_catalog_and_a_bad_jsonl_line(pipeline, capsys, tmp_path):
    header = tmp_path / "header.csv"
    header.write_text(pipeline.catalog.read_text(encoding="utf-8").splitlines()[0] + "\n")
    argv = ["prepare", "--source", str(header), "--out", str(tmp_path / "d1")]
    _refused(pipeline, capsys, argv, r"has no rows")
    rows = tmp_path / "rows.jsonl"
    good = json.dumps({"title": "a", "imageurl": "x.jpg"})
    rows.write_text(f"{good}\n{good}\n{{not json\n{good}\n")
    argv = ["prepare", "--source", str(rows), "--out", str(tmp_path / "d2")]
    _refused(pipeline, capsys, argv, r"line 3")


# --------------------------------------------------------------------------- the --out sweep

VERB_ARGS = {
    "synth": ["synth", "--n", "60", "--out"],
    "prepare": ["prepare", "--source", "{catalog}", "--out"],
    "init-model": ["init-model", "--data", "{data}", *SIZES, "--out"],
    "train": ["train", "--model", "{base}", "--data", "{data}", *TRAIN, "--out"],
    "eval": ["eval", "--model", "{run}", "--data", "{data}", "--out"],
    "predict": ["predict", "{photo}", "--model", "{run}", "--out"],
    "merge": ["merge", "{run}", "--out"],
}
OUTPUTS = {  # each verb's own output in the pipeline
    "synth": "{root}/synth",
    "prepare": "{data}",
    "init-model": "{base}",
    "train": "{run}",
    "eval": "{eval}",
    "predict": "{predictions}",
    "merge": "{merged}",
}
INPUTS = {  # an input of the same command
    "prepare": "{root}/synth",
    "init-model": "{data}",
    "train": "{base}",
    "eval": "{data}",
    "predict": "{photo}",
    "merge": "{run}",
}


def _sweep() -> list[tuple[str, str]]:
    cases = []
    for verb in VERB_ARGS:
        targets = [other for other in OUTPUTS if other != verb]
        targets += ["input"] if verb in INPUTS else []
        targets += ["file", "foreign"]
        cases += [(verb, target) for target in targets]
    return cases


@pytest.mark.parametrize(("verb", "target"), _sweep())
def test_out_pointed_anywhere_it_must_not_write_leaves_every_byte(pipeline, capsys, verb, target):
    fields = {name: _p(pipeline, name) for name in Pipeline.__dataclass_fields__}
    if target == "input":
        out = INPUTS[verb]
    elif target == "file":
        out = "{notes}"
    elif target == "foreign":
        out = "{foreign}"
    else:
        out = OUTPUTS[target]
    argv = [a.format(**fields) for a in [*VERB_ARGS[verb], out]]
    _refused(pipeline, capsys, argv, r"--out|RUN|is a (file|folder)|not empty|holds")
