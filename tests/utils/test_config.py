"""Typed configuration: YAML + key=value overrides onto dataclasses, errors that name the key."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from vlmtune.utils.config import ConfigError, config_to_dict, load_config, save_config


@dataclass
class Opt:
    learning_rate: float = 1e-4
    steps: int = 10
    mode: Literal["lora", "full"] = "lora"
    targets: list[str] = field(default_factory=lambda: ["qkv_proj"])
    out: Path | None = None
    bf16: bool = False

    def __post_init__(self) -> None:
        if self.steps <= 0:
            raise ValueError(f"steps must be positive, got {self.steps}")


@dataclass
class Root:
    train: Opt = field(default_factory=Opt)
    name: str = "run"


def test_yaml_then_overrides(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("train:\n  learning_rate: 3e-4\n  steps: 5\nname: base\n")
    cfg = load_config(
        Root, cfg_file, ["train.steps=7", "train.targets=a,b", "train.bf16=true", "train.out=/x"]
    )
    assert cfg.train.learning_rate == pytest.approx(3e-4)
    assert cfg.train.steps == 7
    assert cfg.train.targets == ["a", "b"]
    assert cfg.train.bf16 is True
    assert cfg.train.out == Path("/x")
    assert cfg.name == "base"


def test_unknown_key_is_named_with_suggestion():
    with pytest.raises(
        ConfigError, match=r"unknown key 'train.lerning_rate'.*did you mean 'train.learning_rate'"
    ):
        load_config(Root, None, ["train.lerning_rate=1"])


def test_bad_value_names_key_value_and_allowed():
    with pytest.raises(ConfigError, match=r"train.steps: 'many' is not a valid integer"):
        load_config(Root, None, ["train.steps=many"])
    with pytest.raises(
        ConfigError, match=r"train.mode: 'qlora2' is not allowed; choose one of 'lora', 'full'"
    ):
        load_config(Root, None, ["train.mode=qlora2"])


def test_post_init_errors_are_reported_with_section():
    with pytest.raises(ConfigError, match=r"^train: steps must be positive, got -1"):
        load_config(Root, None, ["train.steps=-1"])


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(Root, None, ["train.steps"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Root, tmp_path / "nope.yaml")


def test_save_and_reload_round_trip(tmp_path):
    cfg = load_config(Root, None, ["train.steps=3", "train.out=/tmp/o"])
    path = save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(Root, path) == cfg
    assert config_to_dict(cfg)["train"]["out"] == "/tmp/o"


@pytest.mark.parametrize("text", ["my data #1.csv", "0123", "on", "null", "a: b", "[x]"])
def test_text_fields_keep_the_override_as_typed(text):
    cfg = load_config(Root, None, [f"name={text}", f"train.out={text}"])
    assert cfg.name == text
    assert cfg.train.out == (None if text == "null" else Path(text))


def test_other_fields_still_read_yaml():
    cfg = load_config(Root, None, ["train.steps=0x10", "train.bf16=on", "train.targets=[a, b]"])
    assert (cfg.train.steps, cfg.train.bf16, cfg.train.targets) == (16, True, ["a", "b"])


def test_typed_values_sit_between_the_file_and_the_overrides(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("train:\n  steps: 5\n  learning_rate: 3e-4\nname: base\n")
    values = {"name": "o #2", "train.steps": 6, "train.out": Path("0123"), "train.bf16": True}
    cfg = load_config(Root, cfg_file, ["train.steps=7"], values=values)
    assert cfg.name == "o #2" and cfg.train.out == Path("0123") and cfg.train.bf16 is True
    assert cfg.train.steps == 7  # the user's override wins
    assert cfg.train.learning_rate == pytest.approx(3e-4)  # the file's value stands


def test_typed_values_are_checked_like_any_other():
    with pytest.raises(ConfigError, match=r"train.steps: 'x' is not a valid integer"):
        load_config(Root, None, values={"train.steps": "x"})
    with pytest.raises(ConfigError, match=r"unknown key 'train.stpes'"):
        load_config(Root, None, values={"train.stpes": 3})


def test_flag_fields_carry_their_names_and_docstrings():
    import dataclasses
    from dataclasses import dataclass

    from vlmtune.utils.config import FLAG, field_docs, flag

    @dataclass
    class Args:
        out: Path | None = flag("--out", "-o", default=None)
        """Folder to write.

        Second paragraph."""
        tags: list[str] = flag("--tag", default_factory=list)
        """Tags."""
        plain: int = 3

    fields = {f.name: f for f in dataclasses.fields(Args)}
    assert fields["out"].metadata[FLAG]["names"] == ("--out", "-o")
    assert "plain" not in {n for n, f in fields.items() if FLAG in f.metadata}
    assert Args().tags == [] and Args().out is None
    assert field_docs(Args) == {"out": "Folder to write.\n\nSecond paragraph.", "tags": "Tags."}
