"""The CLI skeleton: every verb answers --help; bad configuration fails before work, naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vlmtune.cli.main import main

VERBS = [
    "synth",
    "prepare",
    "init-model",
    "train",
    "eval",
    "predict",
    "merge",
    "demo",
    "serve-images",
    "plan",
    "inspect",
    "serve",
]


def test_top_level_help_lists_every_verb(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for verb in VERBS:
        assert verb in text, verb


@pytest.mark.parametrize("verb", VERBS)
def test_each_verb_has_help(verb, capsys):
    assert main([verb, "--help"]) == 0
    assert "Usage" in capsys.readouterr().out


def test_console_script_runs():
    exe = Path(sys.executable).parent / "vlmtune"
    result = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("vlmtune ")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--out", "{tmp}", "train_config=x.yaml", "nn=3"], "unknown key 'nn'"),
        (["demo", "--out", "{tmp}", "seed=abc"], "seed: 'abc' is not a valid integer"),
        (
            ["train", "--model", "{tmp}", "--data", "{tmp}", "--out", "{tmp}/r", "train.mode=half"],
            "train.mode: 'half' is not allowed",
        ),
        (
            [
                "train",
                "--model",
                "{tmp}",
                "--data",
                "{tmp}",
                "--out",
                "{tmp}/r",
                "train.learning_rate=fast",
            ],
            "train.learning_rate",
        ),
        (["init-model", "--data", "{tmp}", "--out", "{tmp}/m", "hidden_size=31"], "not divisible"),
        (["demo", "--out", "{tmp}", "--n", "10"], "n=10"),
    ],
)
def test_bad_config_fails_fast_naming_the_key(argv, message, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vlmtune {argv[0]}: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "catalog").exists() and not (tmp_path / "r").exists()


def test_yaml_config_file_with_unknown_section(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  path: /x\ntrian:\n  max_steps: 3\n")
    assert (
        main(["train", "--config", str(cfg), "--data", str(tmp_path), "--out", str(tmp_path / "r")])
        == 2
    )
    assert "unknown key 'trian'" in capsys.readouterr().err


@pytest.fixture
def captured_prepare(monkeypatch):
    """``vlmtune prepare`` with the work replaced: records the PrepareArgs it was given."""
    from vlmtune.data.prepare import PrepareError

    seen = []

    def fake_prepare(args, **_options):
        seen.append(args)
        raise PrepareError("stopped by the test")

    monkeypatch.setattr("vlmtune.data.prepare.prepare_dataset", fake_prepare)
    return seen


TEXTS = ["my data #1.csv", "0123", "on", "null", "o #2"]


@pytest.mark.parametrize("text", TEXTS)
def test_flag_values_reach_the_config_as_typed(text, tmp_path, captured_prepare):
    out = tmp_path / text
    assert main(["prepare", "--source", text, "--out", str(out), "--stratify", text]) == 2
    (args,) = captured_prepare
    assert (args.source, args.out, args.stratify) == (text, out, text)


@pytest.mark.parametrize("text", TEXTS)
def test_text_overrides_reach_the_config_as_typed(text, captured_prepare):
    assert main(["prepare", f"source={text}", f"out={text}", "seed=3"]) == 2
    (args,) = captured_prepare
    assert (args.source, args.out, args.seed) == (text, Path(text), 3)


def test_flags_sit_between_the_config_file_and_the_overrides(tmp_path, captured_prepare):
    cfg = tmp_path / "p.yaml"
    cfg.write_text("source: from_file.csv\nout: from_file\nseed: 1\nstratify: category3_code\n")
    argv = ["prepare", "--config", str(cfg), "--source", "flag #1.csv", "--seed", "2", "seed=5"]
    assert main(argv) == 2
    (args,) = captured_prepare
    assert (args.source, args.out, args.seed) == ("flag #1.csv", Path("from_file"), 5)
    assert args.stratify == "category3_code"
    assert main([*argv, "stratify=null"]) == 2  # null unsets a field that may be unset
    assert captured_prepare[1].stratify is None


def test_demo_flags_reach_its_config_as_typed(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr("vlmtune.cli.demo.run_demo", seen.append)
    out = tmp_path / "o #2"
    assert main(["demo", "--out", str(out), "--seed", "7", "--quick", "image_size=0112x140"]) == 0
    (args,) = seen
    assert (args.out, args.seed, args.quick, args.image_size) == (out, 7, True, "0112x140")


def test_plan_prints_the_breakdown_and_the_fits_table(capsys):
    assert main(["plan", "--preset", "phi3v-128k", "--mode", "lora", "--gpu-memory", "24"]) == 0
    out = capsys.readouterr().out
    assert "Peak memory per GPU" in out and "fits 24 GiB" in out
    assert main(["plan", "--preset", "phi3v-128k", "--mode", "half"]) == 2
    assert "'half' is not one of" in capsys.readouterr().err
