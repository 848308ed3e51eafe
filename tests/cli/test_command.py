"""Options generated from config dataclasses: declared once, merged in a fixed order."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import click
import pytest

from vlmtune.cli._command import build_command, flag_specs, split_items
from vlmtune.utils.config import ConfigError, flag


@dataclass
class Inner:
    """A nested section."""

    rate: float = flag("--rate", default=0.5)
    """Learning rate of the thing."""
    mode: Literal["a", "b"] = flag("--mode", default="a")
    """Which mode."""
    hidden: int = 3
    """Not a flag: a YAML key and override only."""


@dataclass
class Root:
    """The command's config."""

    inputs: list[Path] = flag(argument=True, default_factory=list)
    """Files to read."""
    out: Path | None = flag("--out", "-o", default=None)
    """Where to write."""
    progress: bool = flag("--progress/--no-progress", default=True)
    """Show a progress bar."""
    overwrite: bool = flag("--overwrite", default=False)
    """Replace what is there."""
    inner: Inner = field(default_factory=Inner)
    """The section."""


def _run(argv, cls=Root):
    seen = {}

    def run(config):
        seen["config"] = config
        return 7

    command = build_command("thing", cls, run, "Do the thing.")
    code = command.main(args=argv, standalone_mode=False)
    return code, seen.get("config")


def test_every_flag_field_becomes_one_option_with_its_docstring_and_key():
    specs = {s.key: s for s in flag_specs(Root)}
    assert set(specs) == {"inputs", "out", "progress", "overwrite", "inner.rate", "inner.mode"}
    assert specs["inputs"].argument and specs["inputs"].many
    help_text = build_command("thing", Root, lambda c: None, "Do the thing.").get_help(
        click.Context(click.Command("x"))
    )
    assert "Learning rate of the thing. [inner.rate; default: 0.5]" in " ".join(help_text.split())
    assert "--no-progress" in help_text and "[a|b]" in help_text
    assert "--hidden" not in help_text


def test_defaults_then_yaml_then_flags_then_overrides(tmp_path):
    code, cfg = _run([])
    assert code == 7 and cfg == Root()
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("out: from_yaml\ninner: {rate: 0.1, hidden: 9}\n")
    _, cfg = _run(["--config", str(yaml_file)])
    assert cfg.out == Path("from_yaml") and cfg.inner.rate == 0.1 and cfg.inner.hidden == 9
    _, cfg = _run(["-c", str(yaml_file), "--rate", "0.2", "-o", "o #2"])
    assert cfg.inner.rate == 0.2 and cfg.out == Path("o #2") and cfg.inner.hidden == 9
    _, cfg = _run(["-c", str(yaml_file), "--rate", "0.2", "inner.rate=0.3", "inner.hidden=4"])
    assert cfg.inner.rate == 0.3 and cfg.inner.hidden == 4


def test_booleans_are_unset_unless_given(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("progress: false\noverwrite: true\n")
    _, cfg = _run(["-c", str(yaml_file)])
    assert cfg.progress is False and cfg.overwrite is True  # flags not given leave YAML alone
    _, cfg = _run(["-c", str(yaml_file), "--progress"])
    assert cfg.progress is True


def test_positionals_and_overrides_share_the_words(tmp_path):
    image = tmp_path / "a=b.jpg"  # looks like an override but is a file
    image.write_bytes(b"x")
    _, cfg = _run([str(image), "photos", "inner.mode=b"])
    assert cfg.inputs == [image, Path("photos")] and cfg.inner.mode == "b"


def test_bad_values_name_the_flag_or_the_key():
    with pytest.raises(click.BadParameter, match="'c' is not one of 'a', 'b'"):
        _run(["--mode", "c"])
    with pytest.raises(ConfigError, match="inner.rate: 'fast' is not a valid number"):
        _run(["inner.rate=fast"])
    with pytest.raises(ConfigError, match="unknown key 'inner.rat'"):
        _run(["inner.rat=1"])


def test_a_command_without_positionals_refuses_stray_words():
    @dataclass
    class NoPositional:
        out: Path | None = flag("--out", default=None)
        """Out."""

    with pytest.raises(click.UsageError, match="unexpected argument 'stray'"):
        _run(["stray"], NoPositional)
    assert split_items(["a.b=1", "x"]) == (["x"], ["a.b=1"])
