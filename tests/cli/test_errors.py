"""Errors end in one line naming the cause; --debug shows the traceback; --help loads nothing heavy."""

from __future__ import annotations

import subprocess
import sys

from vlmtune.cli.main import main


def test_top_level_help_imports_no_heavy_library():
    code = (
        "import sys\n"
        "from vlmtune.cli.main import main\n"
        "assert main(['--help']) == 0\n"
        "heavy = [m for m in ('torch', 'transformers', 'pandas', 'numpy') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert "Serve a folder" in result.stdout  # summaries come from the verb modules' docstrings


def test_a_user_error_is_one_line_with_exit_2_and_no_traceback(tmp_path, capsys):
    assert main(["serve-images", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vlmtune serve-images: ") and "is not a folder" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_debug_prints_the_traceback_too(tmp_path, capsys, monkeypatch):
    assert main(["serve-images", str(tmp_path / "nope"), "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "vlmtune serve-images: " in err
    monkeypatch.setenv("VLMTUNE_DEBUG", "1")
    assert main(["serve-images", str(tmp_path / "nope")]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_usage_mistakes_exit_2(capsys):
    assert main(["serve-images", "--port", "many"]) == 2
    assert "'many' is not a valid integer" in capsys.readouterr().err
    assert main(["no-such-verb"]) == 2
    assert "No such command 'no-such-verb'" in capsys.readouterr().err
