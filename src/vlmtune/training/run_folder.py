"""The run folder of ``vlmtune train``: who may write there, what a resume continues, and whether it may.

Everything here is decided before a model or a dataset is loaded, so a mistake
costs nothing and changes nothing:

* :func:`claim_run_folder` applies the output policy of :mod:`vlmtune.utils.outputs`:
  the run folder must be new, empty or an earlier training run (recognised by its
  marker, or for runs older than markers by ``config.yaml`` beside its log or
  checkpoints); anything else needs ``--overwrite``, and the base model and the
  dataset are never a run folder. :func:`mark_run_folder` writes the marker first.
* :func:`resolve_resume` picks the checkpoint to continue (``auto``: the latest),
  refuses to start a new run on top of an earlier run's checkpoints, and refuses a
  checkpoint that could not be resumed exactly (no optimizer or scheduler state).
* :func:`check_resume_compatible` compares the request with the run's own
  ``config.yaml``: a resume that changes the model, the mode or the adapters would
  fail half-way (or train something else); it is refused naming the key, both
  values and the fix, and ``config.yaml`` is left as it was.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, get_type_hints

import yaml
from transformers.trainer_utils import get_last_checkpoint

from vlmtune.training.args import TrainConfig
from vlmtune.training.trainer_state import OPTIMIZER_FILE, SCHEDULER_FILE, TrainerStateError
from vlmtune.utils.config import FLAG, ConfigError, config_to_dict
from vlmtune.utils.logging import get_logger
from vlmtune.utils.outputs import OutputClaim, OutputError, claim_output_dir, write_marker

__all__ = [
    "RUN_CONFIG",
    "check_resume_compatible",
    "claim_run_folder",
    "is_launch_main_process",
    "mark_run_folder",
    "resolve_resume",
]

log = get_logger(__name__)

VERB = "train"
RUN_CONFIG = "config.yaml"
"""The resolved configuration a run writes into its folder (and a resume is checked against)."""

_ALWAYS = ("model.path", "train.mode")
_ADAPTERS = ("lora.r", "lora.alpha", "lora.language_model", "lora.vision_tower", "lora.projector")
_FROZEN = ("train.freeze_vision", "train.freeze_projector")


def is_launch_main_process() -> bool:
    """True in a single process, and on rank 0 of a torchrun / accelerate launch (``RANK``).

    Known before the Trainer sets up distribution, so that only one process claims
    and marks the run folder (another rank could see the marker half-written).
    """
    return os.environ.get("RANK", "0") == "0"


def claim_run_folder(config: TrainConfig) -> OutputClaim:
    """Decide whether the run may write ``train.output_dir``; raise ``OutputError`` (exit 2) if not."""
    run_dir = Path(config.train.output_dir)
    blocker = next((p for p in run_dir.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():  # the folder could never be created
        raise OutputError(
            f"--out {str(run_dir)!r}: {str(blocker)!r} is a file, not a folder; give a folder path"
        )
    return claim_output_dir(
        config.train.output_dir,
        VERB,
        inputs={"the base model": config.model.path, "the dataset": config.data.path},
        overwrite=config.train.overwrite,
        legacy=_is_earlier_run,
    )


def mark_run_folder(run_dir: Path) -> None:
    """Create the run folder if needed and mark it as a ``vlmtune train`` output."""
    write_marker(run_dir, VERB)


def _is_earlier_run(folder: Path) -> bool:
    """A run folder written before markers existed: config.yaml beside its log or checkpoints."""
    return (folder / RUN_CONFIG).is_file() and (
        (folder / "metrics.jsonl").is_file() or any(folder.glob("checkpoint-*"))
    )


def resolve_resume(resume: str | None, run_dir: Path, deepspeed: bool = False) -> str | None:
    """Checkpoint folder to resume from: ``auto`` picks the latest in ``run_dir`` (None if there is none).

    Raises :class:`ConfigError` for a new run over an earlier run's checkpoints or a
    path that is not a checkpoint, and :class:`TrainerStateError` for a checkpoint
    without its optimizer or scheduler state (``deepspeed``: its own format, not checked).
    """
    if resume is None:
        if run_dir.is_dir() and get_last_checkpoint(str(run_dir)) is not None:
            raise ConfigError(
                f"{str(run_dir)!r} already holds checkpoints of a run: continue it by adding "
                "--resume auto to this command (train.resume=auto), or choose a new --out"
            )
        return None
    if resume == "auto":
        last = get_last_checkpoint(str(run_dir)) if run_dir.is_dir() else None
        if last is None:
            log.info("resume=auto: no checkpoint in %s, starting fresh", run_dir)
            return None
        log.info("resuming from %s", last)
    else:
        last = resume
        if not (Path(last) / "trainer_state.json").is_file():
            raise ConfigError(
                f"train.resume (--resume): {resume!r} is not a checkpoint folder (no trainer_state.json); "
                "give a RUN/checkpoint-N folder, or 'auto'"
            )
    if not deepspeed:
        _check_resumable(Path(last))
    return str(last)


def _check_resumable(folder: Path) -> None:
    missing = [name for name in (OPTIMIZER_FILE, SCHEDULER_FILE) if not (folder / name).is_file()]
    if missing:
        raise TrainerStateError(
            f"checkpoint {str(folder)!r} has no {' or '.join(missing)}, so its run cannot be "
            "resumed exactly (vlmtune stores no pickled state); to start a new run from its "
            "weights, pass the folder as --model instead"
        )


def check_resume_compatible(config: TrainConfig, checkpoint: str | None) -> None:
    """Raise :class:`ConfigError` when resuming ``checkpoint`` with ``config`` would change what trains.

    The request is compared with the ``config.yaml`` of the checkpoint's run on the
    model, the mode and, per mode, the adapter settings or the frozen components.
    Other settings (steps, learning rate, logging...) may change on a resume.
    """
    if checkpoint is None:
        return
    run = Path(checkpoint).parent
    saved = _read_run_config(run / RUN_CONFIG)
    if saved is None:
        return
    requested = config_to_dict(config)
    adapters = _value(saved, "train.mode") in ("lora", "qlora")
    for key in (*_ALWAYS, *(_ADAPTERS if adapters else _FROZEN)):
        before, now = _value(saved, key), _value(requested, key)
        if before is _MISSING or _same(key, before, now):
            continue
        fix = f"{_flag_of(key)} {_text(before)}" if _flag_of(key) else f"{key}={_text(before)}"
        raise ConfigError(
            f"{key}: the run in {str(run)!r} was trained with {_text(before)}, this command asks for "
            f"{_text(now)}; a resume continues the same training: resume with {fix}, or start a new "
            "run with another --out"
        )


def _read_run_config(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        log.warning("no %s beside the checkpoint: the resume cannot be checked against it", path)
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{str(path)!r} cannot be read ({err}); restore it to resume") from err
    return data if isinstance(data, dict) else {}


_MISSING = object()


def _value(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _same(key: str, before: Any, now: Any) -> bool:
    if key == "model.path" and before is not None and now is not None:
        return Path(before).resolve() == Path(now).resolve()
    return before == now


def _text(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value)) or "[]"
    return str(value)


def _flag_of(dotted: str) -> str | None:
    """The command-line flag of a config key (``train.mode`` -> ``--mode``), if it has one."""
    section, name = dotted.split(".")
    cls = get_type_hints(TrainConfig)[section]
    for item in dataclasses.fields(cls):
        if item.name == name and FLAG in item.metadata:
            return item.metadata[FLAG]["names"][0].split("/")[0]
    return None
