"""``vlmtune demo``: the whole pipeline, offline, on a laptop CPU, with before/after figures.

synth (a catalog whose photos decide title, category and price) -> serve its
images on 127.0.0.1 -> prepare over HTTP (broken rows dropped and reported) ->
init-model (a small model in its family's checkpoint layout) -> train
(vlmtune/configs/demo.yaml, tracked in W&B offline and metrics.jsonl) -> eval on
the held-out test split, the untrained model as "before" -> report.html and
summary.json.

Each stage is the library call behind the matching command, so the demo proves
that the commands fit together. Running the demo again with the same settings
reuses every finished stage (an interrupted training resumes from its last
checkpoint); other settings go to a fresh numbered folder. Either way it says which.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from vlmtune.utils.config import ConfigError, config_to_dict, flag, load_config
from vlmtune.utils.errors import Interrupted
from vlmtune.utils.io import atomic_write_json
from vlmtune.utils.outputs import read_marker, write_marker

__all__ = ["CONFIG", "DemoArgs", "run", "run_demo"]

SUMMARY_METRICS = ("parse_rate", "category_accuracy", "title_exact_match", "price_mape")
STAGES = ("prepare", "init-model", "train", "eval")
"""Stages as reused: synth and prepare are one (the catalog's URLs name that run's image server)."""
_STATE = "demo_stages.json"
_PACKAGED_RECIPE = resources.files("vlmtune") / "configs" / "demo.yaml"
"""The demo's recipe, package data so that the demo runs from a wheel as well as from a clone."""


@dataclass
class DemoArgs:
    """Sizes of the offline demo. The defaults are the measured configuration of the README."""

    out: Path = flag("--out", "-o", default=Path("demo_out"))
    """Folder for every artefact (catalog, dataset, models, run, eval, summary.json)."""
    n: int | None = flag("--n", default=None)
    """Products to synthesise (default 1500; 240 with --quick)."""
    seed: int = flag("--seed", default=0)
    """One seed for the catalog, the split, the initial weights and training."""
    family: str = flag("--family", default="phi3v")
    """Model family of the small model (phi3v, qwen2_5_vl, smolvlm, gemma3). Every family trains
    with the same recipe, so their demos compare like for like."""
    quick: bool = flag("--quick", default=False)
    """A ~15 s run (240 products, 40 steps) that proves every stage works (the test suite runs
    it), not the quality."""
    image_size: str = "224x280"
    """Photo size of the synthetic catalog (WxH)."""
    duplicate_frac: float = flag("--duplicate-frac", default=0.05)
    """Fraction of synthetic products that re-list another's photo (as is or slightly changed), so
    prepare's duplicate groups have work to do."""
    train_config: Path | None = None
    """Training recipe; default the packaged ``vlmtune/configs/demo.yaml``."""
    train_overrides: list[str] | None = None
    """Extra key=value overrides for the training recipe (e.g. train.max_steps=100)."""
    report_to: str = "wandb"
    """Tracker of the training stage (W&B runs offline without a key or network)."""

    def __post_init__(self) -> None:
        from vlmtune.models.families import family_named

        family_named(self.family)  # an unknown name stops here, listing the supported ones
        if self.n is not None and self.n < 50:
            raise ValueError(
                f"n={self.n}: the demo needs at least 50 products to have a test split"
            )
        if not 0.0 <= self.duplicate_frac <= 0.5:
            raise ValueError(f"duplicate_frac must be in [0, 0.5], got {self.duplicate_frac}")


CONFIG = DemoArgs


def run(args: DemoArgs) -> None:
    run_demo(args)


def run_demo(args: DemoArgs, console: Console | None = None) -> dict[str, Any]:
    """Run (or reuse) every stage; write and return ``summary.json`` (before/after/baseline, seconds, paths)."""
    console = console or Console()
    settings = _settings(args)
    out = _choose_folder(Path(args.out).resolve(), settings, console)
    paths = _paths(out)
    train_cfg = _train_config(args, paths)  # fail on a bad recipe before any work
    state = _State(out, settings)
    n = args.n or (240 if args.quick else 1500)

    def stage(name: str, fn: Callable[[], Any]) -> None:
        console.rule(f"[bold]{name}")
        if state.done(name):
            console.print(
                f"[green]✓[/] {name}: reused from the earlier run in {out} (same settings)"
            )
            return
        result = fn()
        state.finish(name, result)
        console.print(f"[green]✓[/] {name} in {state.seconds[name]:.1f}s")

    stage("prepare", lambda: _synth_and_prepare(args, paths, n, state))
    stage("init-model", lambda: state.timed("init-model", lambda: _init_model(paths, args)))
    stage("train", lambda: state.timed("train", lambda: _train(train_cfg, paths)))
    stage("eval", lambda: state.timed("eval", lambda: _eval(paths)))
    summary = _summary(out, state, paths)
    atomic_write_json(out / "summary.json", summary)
    console.print(_table(summary))
    return summary


# --------------------------------------------------------------------------- stages


def _synth_and_prepare(
    args: DemoArgs, paths: dict[str, Path], n: int, state: _State
) -> dict[str, Any]:
    """synth and prepare in one stage: the catalog's image URLs name this run's local server."""
    from vlmtune.data.prepare import PrepareArgs, prepare_dataset
    from vlmtune.data.synthetic import SynthArgs, generate_catalog, serve_directory
    from vlmtune.models.image_tokens import image_token_counter

    catalog_dir = paths["catalog"].parent
    catalog_dir.mkdir(parents=True, exist_ok=True)
    with serve_directory(catalog_dir) as server:
        synth = SynthArgs(
            out=catalog_dir, n=n, seed=args.seed, image_size=args.image_size,
            base_url=server.url, duplicate_frac=args.duplicate_frac, overwrite=True,
        )  # fmt: skip
        state.timed("synth", lambda: generate_catalog(synth))
        prepare = PrepareArgs(
            source=str(paths["catalog"]), out=paths["data"], seed=args.seed, overwrite=True
        )
        counter = image_token_counter(prepare.num_crops)
        report = state.timed("prepare", lambda: prepare_dataset(prepare, image_tokens=counter))
    return {
        "kept": report.kept,
        "dropped": report.dropped,
        "dropped_by_reason": report.dropped_by_reason,
        "duplicate_groups": report.duplicate_groups,
        "conflict_groups": report.conflict_groups,
    }


def _init_model(paths: dict[str, Path], args: DemoArgs) -> dict[str, Any]:
    from vlmtune.training.init_model import InitModelArgs, init_model

    init = InitModelArgs(
        data=paths["data"], out=paths["base_model"], seed=args.seed, family=args.family,
        overwrite=True,
    )  # fmt: skip
    init_model(init)
    return {}


def _train(train_cfg: Any, paths: dict[str, Path]) -> dict[str, Any]:
    from vlmtune.cli.train import generation_eval_for
    from vlmtune.training.train import train

    if any(paths["run"].glob("checkpoint-*")):
        train_cfg.train.resume = "auto"  # an earlier demo was stopped during training
    gen_eval = generation_eval_for(train_cfg) if train_cfg.train.evaluates else None
    result = train(train_cfg, gen_eval)
    if result.interrupted_by is not None:
        raise Interrupted(
            f"stopped by {result.interrupted_by} during training (checkpoint {result.last_checkpoint}); "
            "run the same `vlmtune demo` command again to continue from it"
        )
    keys = ("global_step", "final_train_loss", "train_samples_per_second")
    return {k: result.summary.get(k) for k in keys}


def _eval(paths: dict[str, Path]) -> dict[str, Any]:
    from vlmtune.evaluation.args import EvalArgs
    from vlmtune.evaluation.run import run_eval
    from vlmtune.inference.args import InferenceArgs

    args = EvalArgs(
        inference=InferenceArgs(model=paths["run"]), data=paths["data"], split="test",
        base_model=paths["base_model"], out=paths["eval"], overwrite=True,
    )  # fmt: skip
    return {"out": str(run_eval(args).out)}


# --------------------------------------------------------------------------- reuse


class _State:
    """Which stages of a demo folder finished, with which settings (``demo_stages.json``)."""

    def __init__(self, out: Path, settings: dict[str, Any]) -> None:
        self.path = out / _STATE
        self.settings = settings
        previous = _read_json(self.path)
        same = previous is not None and previous.get("settings") == settings
        self.stages: dict[str, Any] = dict(previous.get("stages", {})) if same else {}
        self.seconds: dict[str, float] = dict(previous.get("seconds", {})) if same else {}
        self.reused: list[str] = []

    def done(self, name: str) -> bool:
        if name in self.stages:
            self.reused.append(name)
            return True
        return False

    def timed(self, name: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        result = fn()
        self.seconds[name] = round(time.perf_counter() - start, 2)
        return result

    def finish(self, name: str, result: Any) -> None:
        self.stages[name] = result
        index = STAGES.index(name)
        for later in STAGES[index + 1 :]:  # a redone stage invalidates what was built on it
            self.stages.pop(later, None)
        atomic_write_json(
            self.path, {"settings": self.settings, "stages": self.stages, "seconds": self.seconds}
        )


def _settings(args: DemoArgs) -> dict[str, Any]:
    """What decides the demo's outputs: its arguments, the recipe's text and vlmtune's version."""
    from vlmtune import __version__

    recipe = _recipe_text(args)
    fields = config_to_dict(args)
    fields.pop("out")
    return {
        **fields,
        "recipe_sha256": hashlib.sha256(recipe.encode()).hexdigest(),
        "version": __version__,
    }


def _choose_folder(out: Path, settings: dict[str, Any], console: Console) -> Path:
    """``out`` when it is new or holds a demo with the same settings; else ``out-2``, ``out-3`` ..."""
    identity = {"settings_sha256": _digest(settings)}
    candidate, number = out, 1
    while True:
        marker = read_marker(candidate) if candidate.exists() else None
        empty = not candidate.exists() or not any(candidate.iterdir())
        same = (
            marker is not None and marker["verb"] == "demo" and marker.get("identity") == identity
        )
        if empty or same:
            break
        number += 1
        candidate = out.with_name(f"{out.name}-{number}")
    if candidate != out:
        console.print(
            f"[yellow]{out} holds other work (a demo with other settings, or files of yours): "
            f"this demo writes to {candidate}[/]"
        )
    elif (candidate / _STATE).exists():
        console.print(f"{out} holds a demo with the same settings: finished stages are reused")
    write_marker(candidate, "demo", identity)
    return candidate


def _digest(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# --------------------------------------------------------------------------- configuration


def _paths(out: Path) -> dict[str, Path]:
    return {
        "catalog": out / "catalog" / "catalog.csv",
        "data": out / "data",
        "base_model": out / "base_model",
        "run": out / "run",
        "eval": out / "eval",
    }


def _recipe_text(args: DemoArgs) -> str:
    if args.train_config is not None:
        if not Path(args.train_config).is_file():
            raise ConfigError(
                f"train_config: the demo recipe {str(args.train_config)!r} does not exist; "
                "pass train_config=FILE"
            )
        return Path(args.train_config).read_text(encoding="utf-8")
    return _PACKAGED_RECIPE.read_text(encoding="utf-8")


def _train_config(args: DemoArgs, paths: dict[str, Path]) -> Any:
    from vlmtune.training.args import TrainConfig

    if args.train_config is not None:
        _recipe_text(args)
        return _load_recipe(TrainConfig, Path(args.train_config), args, paths)
    with resources.as_file(_PACKAGED_RECIPE) as path:
        return _load_recipe(TrainConfig, path, args, paths)


def _load_recipe(cls: type, recipe: Path, args: DemoArgs, paths: dict[str, Path]) -> Any:
    quick = (
        ["train.max_steps=40", "train.eval_steps=20", "train.save_steps=20", "data.eval_limit=8"]
        if args.quick
        else []
    )
    fixed = {
        "model.path": paths["base_model"],
        "data.path": paths["data"],
        "train.output_dir": paths["run"],
        "train.seed": args.seed,
        "train.report_to": args.report_to,
        "train.run_name": f"demo-{args.family}-seed{args.seed}",
    }
    return load_config(cls, recipe, [*quick, *(args.train_overrides or [])], values=fixed)


# --------------------------------------------------------------------------- summary


def _summary(out: Path, state: _State, paths: dict[str, Path]) -> dict[str, Any]:
    doc = json.loads((paths["eval"] / "metrics.json").read_text(encoding="utf-8"))
    baselines = doc["baselines"]
    baseline = {
        "parse_rate": None,  # the baselines are constants, not generated text: nothing to parse
        "category_accuracy": baselines["majority_category"]["category_accuracy"],
        "title_exact_match": baselines["most_common_title"]["title_exact_match"],
        "price_mape": baselines["mean_price"]["price_mape"],
        "price_mape_median_price": baselines["median_price"]["price_mape"],
    }
    seconds = {k: state.seconds[k] for k in ("synth", *STAGES) if k in state.seconds}
    return {
        "before": {k: doc["base_model"][k] for k in SUMMARY_METRICS},
        "after": {k: doc["model"][k] for k in SUMMARY_METRICS},
        "baseline": baseline,
        "baseline_definition": "majority category, most common title and mean price of the training split",
        "test_rows": doc["model"].get("n"),
        "prepare": state.stages["prepare"],
        "train": state.stages["train"],
        "reused_stages": list(state.reused),
        "seconds": {**seconds, "total": round(sum(seconds.values()), 2)},
        "paths": {
            "out": str(out),
            "report": str(paths["eval"] / "report.html"),
            "run": str(paths["run"]),
            "model": str(paths["run"] / "model"),
            "metrics": str(paths["eval"] / "metrics.json"),
        },
    }


def _table(summary: dict[str, Any]) -> Table:
    table = Table(title="vlmtune demo: held-out test split")
    for column in ("metric", "before training", "after training", "baseline"):
        table.add_column(column, justify="right" if column != "metric" else "left")
    for key in SUMMARY_METRICS:
        cells = [_cell(summary[part][key]) for part in ("before", "after", "baseline")]
        table.add_row(key, *cells)
    paths = summary["paths"]
    table.caption = "\n".join(
        [
            *(f"{k}: {v}" for k, v in paths.items()),
            f"total {summary['seconds']['total']:.0f}s"
            + (
                f" (reused: {', '.join(summary['reused_stages'])})"
                if summary["reused_stages"]
                else ""
            ),
            f"next: vlmtune predict --model {paths['model']} PHOTOS... --out listings.csv",
        ]
    )
    return table


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
