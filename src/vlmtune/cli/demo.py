"""``vlmtune demo``: the whole pipeline, offline, on a laptop CPU, with before/after figures.

synth (a catalog whose photos decide title, category and price) -> serve its
images on 127.0.0.1 -> prepare over HTTP (broken rows dropped and reported) ->
init-model (a small Phi-3-V in the official layout) -> train (vlmtune/configs/demo.yaml,
tracked in W&B offline and metrics.jsonl) -> eval on the held-out test split,
the untrained model as "before" -> report.html and summary.json.

Each stage is the library call behind the matching command, so the demo proves
that the commands fit together; nothing here is demo-only logic except the
choice of sizes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from vlmtune.cli._common import CONFIG_OPTION, OVERRIDES_ARGUMENT, build_config
from vlmtune.cli.train import generation_eval_for
from vlmtune.data.prepare import PrepareArgs, prepare_dataset
from vlmtune.data.synthetic import SynthArgs, generate_catalog, serve_directory
from vlmtune.evaluation.args import EvalArgs
from vlmtune.evaluation.run import run_eval
from vlmtune.inference.args import InferenceArgs
from vlmtune.training.args import TrainConfig
from vlmtune.training.init_model import InitModelArgs, init_model
from vlmtune.training.train import train
from vlmtune.utils.config import ConfigError, load_config
from vlmtune.utils.io import atomic_write_json

__all__ = ["DemoArgs", "command", "run_demo"]

SUMMARY_METRICS = ("parse_rate", "category_accuracy", "title_exact_match", "price_mape")


@dataclass
class DemoArgs:
    """Sizes of the offline demo. The defaults are the measured configuration of the README."""

    out: Path = Path("demo_out")
    """Folder for every artefact (catalog, dataset, models, run, eval, summary.json)."""
    n: int | None = None
    """Products to synthesise (default 1500; 240 with --quick)."""
    seed: int = 0
    """One seed for the catalog, the split, the initial weights and training."""
    quick: bool = False
    """A ~15 s run (240 products, 40 steps) that proves every stage works (the test suite runs
    it), not the quality."""
    image_size: str = "224x280"
    """Photo size of the synthetic catalog (WxH)."""
    train_config: Path | None = None
    """Training recipe; default the packaged ``vlmtune/configs/demo.yaml``."""
    train_overrides: list[str] | None = None
    """Extra key=value overrides for the training recipe (e.g. train.max_steps=100)."""
    report_to: str = "wandb"
    """Tracker of the training stage (W&B runs offline without a key or network)."""

    def __post_init__(self) -> None:
        if self.n is not None and self.n < 50:
            raise ValueError(
                f"n={self.n}: the demo needs at least 50 products to have a test split"
            )


def run_demo(args: DemoArgs, console: Console | None = None) -> dict[str, Any]:
    """Run every stage; write and return ``summary.json`` (before/after/baseline, seconds, paths)."""
    console = console or Console()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    paths = _paths(out)
    n = args.n or (240 if args.quick else 1500)
    train_cfg = _train_config(args, paths)  # fail on a bad recipe before any work

    def stage(name: str, fn: Callable[[], Any]) -> Any:
        console.rule(f"[bold]{name}")
        start = time.perf_counter()
        result = fn()
        seconds[name] = round(time.perf_counter() - start, 2)
        console.print(f"[green]✓[/] {name} in {seconds[name]:.1f}s")
        return result

    catalog_dir = paths["catalog"].parent
    catalog_dir.mkdir(parents=True, exist_ok=True)
    with serve_directory(catalog_dir) as server:
        synth = SynthArgs(
            out=catalog_dir, n=n, seed=args.seed, image_size=args.image_size, base_url=server.url
        )
        stage("synth", lambda: generate_catalog(synth))
        report = stage(
            "prepare",
            lambda: prepare_dataset(
                PrepareArgs(source=str(paths["catalog"]), out=paths["data"], seed=args.seed)
            ),
        )
    stage(
        "init-model",
        lambda: init_model(
            InitModelArgs(data=paths["data"], out=paths["base_model"], seed=args.seed)
        ),
    )
    result = stage(
        "train",
        lambda: train(
            train_cfg, generation_eval_for(train_cfg) if train_cfg.train.evaluates else None
        ),
    )
    evaluation = stage("eval", lambda: run_eval(_eval_args(paths)))
    summary = _summary(evaluation, seconds, paths, report, result)
    atomic_write_json(out / "summary.json", summary)
    console.print(_table(summary))
    return summary


def command(
    out: Path | None = typer.Option(None, "--out", help="Output folder (default demo_out)."),
    n: int | None = typer.Option(None, "--n", help="Products to synthesise (default 1500)."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of every stage (default 0)."),
    quick: bool = typer.Option(
        False,
        "--quick",
        help="~15 s (240 products, 40 steps): proves every stage, not the quality.",
    ),
    config: Path | None = CONFIG_OPTION,
    overrides: list[str] | None = OVERRIDES_ARGUMENT,
) -> None:
    """Run the whole pipeline offline on a tiny Phi-3-V and print before/after/baseline figures.

    synth -> serve images on 127.0.0.1 -> prepare over HTTP -> init-model ->
    train (W&B offline + metrics.jsonl) -> eval on the held-out test split with the
    untrained model as "before" -> report.html. Writes OUT/summary.json.
    """
    flags = {"out": out, "n": n, "seed": seed, "quick": quick or None}
    args = build_config(DemoArgs, config, overrides, flags=flags)
    run_demo(args)


# --------------------------------------------------------------------------- stages


def _paths(out: Path) -> dict[str, Path]:
    return {
        "catalog": out / "catalog" / "catalog.csv",
        "data": out / "data",
        "base_model": out / "base_model",
        "run": out / "run",
        "eval": out / "eval",
    }


def _train_config(args: DemoArgs, paths: dict[str, Path]) -> TrainConfig:
    if args.train_config is not None:
        if not Path(args.train_config).is_file():
            raise ConfigError(
                f"train_config: the demo recipe {str(args.train_config)!r} does not exist; "
                "pass train_config=FILE"
            )
        return _load_recipe(args.train_config, args, paths)
    # package data, so the demo runs from a wheel as well as from a clone
    recipe = resources.files("vlmtune") / "configs" / "demo.yaml"
    with resources.as_file(recipe) as path:
        return _load_recipe(path, args, paths)


def _load_recipe(recipe: Path, args: DemoArgs, paths: dict[str, Path]) -> TrainConfig:
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
        "train.run_name": f"demo-seed{args.seed}",
    }
    return load_config(TrainConfig, recipe, [*quick, *(args.train_overrides or [])], values=fixed)


def _eval_args(paths: dict[str, Path]) -> EvalArgs:
    return EvalArgs(
        inference=InferenceArgs(model=paths["run"]),
        data=paths["data"],
        split="test",
        base_model=paths["base_model"],
        out=paths["eval"],
    )


def _summary(
    evaluation: Any, seconds: dict[str, float], paths: dict[str, Path], report: Any, result: Any
) -> dict[str, Any]:
    doc = json.loads((evaluation.out / "metrics.json").read_text(encoding="utf-8"))
    baselines = doc["baselines"]
    baseline = {
        "parse_rate": None,  # the baselines are constants, not generated text: nothing to parse
        "category_accuracy": baselines["majority_category"]["category_accuracy"],
        "title_exact_match": baselines["most_common_title"]["title_exact_match"],
        "price_mape": baselines["mean_price"]["price_mape"],
        "price_mape_median_price": baselines["median_price"]["price_mape"],
    }
    return {
        "before": {k: doc["base_model"][k] for k in SUMMARY_METRICS},
        "after": {k: doc["model"][k] for k in SUMMARY_METRICS},
        "baseline": baseline,
        "baseline_definition": "majority category, most common title and mean price of the training split",
        "test_rows": doc["model"].get("n"),
        "prepare": {
            "kept": report.kept,
            "dropped": report.dropped,
            "dropped_by_reason": report.dropped_by_reason,
        },
        "train": {
            k: result.summary.get(k)
            for k in ("global_step", "final_train_loss", "train_samples_per_second")
        },
        "seconds": {**seconds, "total": round(sum(seconds.values()), 2)},
        "paths": {
            "report": str(evaluation.out / "report.html"),
            "run": str(paths["run"]),
            "model": str(paths["run"] / "model"),
            "metrics": str(evaluation.out / "metrics.json"),
        },
    }


def _table(summary: dict[str, Any]) -> Table:
    table = Table(title="vlmtune demo: held-out test split")
    for column in ("metric", "before training", "after training", "baseline"):
        table.add_column(column, justify="right" if column != "metric" else "left")
    for key in SUMMARY_METRICS:
        cells = [_cell(summary[part][key]) for part in ("before", "after", "baseline")]
        table.add_row(key, *cells)
    table.caption = (
        "\n".join(f"{k}: {v}" for k, v in summary["paths"].items())
        + f"\ntotal {summary['seconds']['total']:.0f}s"
    )
    return table


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
