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
    assert "configuration error" in err and message in err
    assert not (tmp_path / "catalog").exists() and not (tmp_path / "r").exists()


def test_yaml_config_file_with_unknown_section(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  path: /x\ntrian:\n  max_steps: 3\n")
    assert (
        main(["train", "--config", str(cfg), "--data", str(tmp_path), "--out", str(tmp_path / "r")])
        == 2
    )
    assert "unknown key 'trian'" in capsys.readouterr().err
