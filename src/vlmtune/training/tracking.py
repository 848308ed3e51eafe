"""Experiment trackers of a run: Weights & Biases, TensorBoard, MLflow or none.

The trackers themselves are transformers' integration callbacks (``report_to``);
this module only points them at the run folder and decides W&B's mode: W&B
runs offline (files under ``RUN/wandb``, syncable later with ``wandb sync``)
when no API key is configured or its server cannot be reached within a few
seconds, so a run never hangs on the network. The environment variables the
integrations read are set only for the duration of the run and restored after.
"""

from __future__ import annotations

import contextlib
import importlib.util
import netrc
import os
import socket
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from vlmtune.utils.config import ConfigError
from vlmtune.utils.logging import get_logger

__all__ = [
    "check_tracker_available",
    "finish_tracking",
    "log_eval_table",
    "log_model_artifact",
    "tracking_environment",
    "wandb_mode",
]

log = get_logger(__name__)

_NETWORK_TIMEOUT_S = 3.0


def check_tracker_available(report_to: str) -> None:
    """Raise :class:`ConfigError` when the chosen tracker's package is not installed."""
    package = {"wandb": "wandb", "tensorboard": "tensorboard", "mlflow": "mlflow"}.get(report_to)
    if package and importlib.util.find_spec(package) is None:
        raise ConfigError(
            f"train.report_to={report_to!r} needs the {package!r} package, which is not installed "
            f"(pip install {package}), or choose train.report_to=none"
        )


def wandb_mode(environ: Mapping[str, str] | None = None) -> str:
    """``online`` when an API key is configured and the W&B server answers; else ``offline``.

    A ``WANDB_MODE`` already set by the user is respected.
    """
    env = os.environ if environ is None else environ
    if env.get("WANDB_MODE"):
        return env["WANDB_MODE"]
    host = urlparse(env.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    if not env.get("WANDB_API_KEY") and not _netrc_has(host):
        log.info("W&B: no API key (WANDB_API_KEY or ~/.netrc): logging offline")
        return "offline"
    try:
        with socket.create_connection((host, 443), timeout=_NETWORK_TIMEOUT_S):
            return "online"
    except OSError as err:
        log.info("W&B: %s unreachable (%s): logging offline", host, err)
        return "offline"


@contextlib.contextmanager
def tracking_environment(
    report_to: str, run_dir: Path, project: str, environ: dict[str, str] | None = None
) -> Iterator[dict[str, str]]:
    """Set the variables the chosen tracker's integration reads, for the block's duration only."""
    env = os.environ if environ is None else environ
    updates = _tracker_variables(report_to, Path(run_dir).resolve(), project, env)
    saved = {key: env.get(key) for key in updates}
    env.update(updates)
    try:
        yield updates
    finally:
        for key, value in saved.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value


def _tracker_variables(
    report_to: str, run_dir: Path, project: str, env: Mapping[str, str]
) -> dict[str, str]:
    if report_to == "wandb":
        (run_dir / "wandb").mkdir(parents=True, exist_ok=True)
        return {
            "WANDB_MODE": wandb_mode(env),
            "WANDB_PROJECT": project,
            "WANDB_DIR": str(run_dir),
            "WANDB_INIT_TIMEOUT": env.get("WANDB_INIT_TIMEOUT", "60"),
            "WANDB_LOG_MODEL": "false",  # the best model is logged once, by log_model_artifact
        }
    if report_to == "tensorboard":
        return {"TENSORBOARD_LOGGING_DIR": str(run_dir / "tensorboard")}
    if report_to == "mlflow":
        variables = {
            "MLFLOW_TRACKING_URI": env.get("MLFLOW_TRACKING_URI", (run_dir / "mlruns").as_uri()),
            "MLFLOW_EXPERIMENT_NAME": env.get("MLFLOW_EXPERIMENT_NAME", project),
        }
        if "MLFLOW_TRACKING_URI" not in env:
            # the local file store of the run folder; MLflow 3 refuses it unless told (it
            # prefers a database), and a file store needs no server or extra package
            variables["MLFLOW_ALLOW_FILE_STORE"] = env.get("MLFLOW_ALLOW_FILE_STORE", "true")
        return variables
    return {}


def log_eval_table(rows: Sequence[dict[str, Any]], step: int) -> None:
    """Log generation rows (image, reference, generated text, parsed fields) as a W&B table."""
    wandb = _active_wandb()
    if wandb is None or not rows:
        return
    # An evaluation row names its photo under "image" (a path); the table shows the
    # picture in "image" and keeps the path beside it, so no column appears twice.
    path_keys = ("image", "image_path")
    keys = [k for k in dict.fromkeys(key for row in rows for key in row) if k not in path_keys]
    table = wandb.Table(columns=["image", "image_path", *keys])
    for row in rows:
        path = row.get("image_path") or row.get("image")
        image = wandb.Image(str(path)) if path and Path(str(path)).is_file() else None
        table.add_data(image, _cell(path), *[_cell(row.get(key)) for key in keys])
    wandb.log({"eval/predictions": table, "train/global_step": step})


def log_model_artifact(model_dir: Path, name: str, metadata: Mapping[str, Any]) -> None:
    """Log the final (best) model folder as a W&B ``model`` artifact, when a W&B run is active."""
    wandb = _active_wandb()
    if wandb is None:
        return
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in name) or "model"
    artifact = wandb.Artifact(name=f"{safe}-model", type="model", metadata=dict(metadata))
    artifact.add_dir(str(model_dir))
    wandb.run.log_artifact(artifact)


def finish_tracking(report_to: str) -> None:
    """Close the W&B run this run opened (transformers' callback leaves it open).

    W&B reads its environment (``WANDB_DIR``, ``WANDB_MODE``...) once per process, when
    its session starts; the session is torn down here so that the next run in the same
    process (a second ``train()`` call, a test suite) writes into its own run folder.
    """
    if report_to != "wandb" or importlib.util.find_spec("wandb") is None:
        return
    import wandb

    if wandb.run is not None:
        wandb.finish()
    wandb.teardown()


def _active_wandb() -> Any:
    if importlib.util.find_spec("wandb") is None:
        return None
    import wandb

    return wandb if wandb.run is not None else None


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _netrc_has(host: str) -> bool:
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    if not path.is_file():
        return False
    try:
        return netrc.netrc(str(path)).authenticators(host) is not None
    except (netrc.NetrcParseError, OSError):
        return False
