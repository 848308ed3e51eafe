"""``vlmtune synth``: write an offline synthetic product catalog (DBQ columns + JPEG photos)."""

from __future__ import annotations

from pathlib import Path

import typer

from vlmtune.cli._common import CONFIG_OPTION, OVERRIDES_ARGUMENT, build_config
from vlmtune.data.synthetic import SynthArgs, generate_catalog

__all__ = ["command"]


def command(
    out: Path | None = typer.Option(
        None, "--out", help="Output folder (catalog.csv, images/, synth_report.json)."
    ),
    n: int | None = typer.Option(None, "--n", help="Number of products (default 2000)."),
    seed: int | None = typer.Option(
        None, "--seed", help="Seed; same seed and arguments give the same bytes."
    ),
    image_size: str | None = typer.Option(
        None, "--image-size", help="WIDTHxHEIGHT (default 448x560)."
    ),
    price_noise: float | None = typer.Option(
        None, "--price-noise", help="Sigma of multiplicative log-normal price noise (default 0)."
    ),
    broken_frac: float | None = typer.Option(
        None,
        "--broken-frac",
        help="Fraction of rows with a failing image reference (default 0.02).",
    ),
    base_url: str | None = typer.Option(
        None, "--base-url", help="Prefix imageurl with this http(s) URL."
    ),
    preview: Path | None = typer.Option(
        None, "--preview", help="Also write a contact sheet PNG here."
    ),
    workers: int | None = typer.Option(
        None, "--workers", help="Drawing processes (0 = all cores)."
    ),
    config: Path | None = CONFIG_OPTION,
    overrides: list[str] | None = OVERRIDES_ARGUMENT,
) -> None:
    """Generate a synthetic catalog whose photos decide title, category and price.

    Products (scarves, tote bags, sneakers, trench coats, caps, ...) are drawn
    with a visible material texture, pattern and colour; the title is
    "{Pattern} {Material} {Type}", category3_code follows the type and the full
    price is a documented function of type, material and pattern. A small share of
    rows gets broken image references (N.A. or a missing file), like real exports.
    """
    if out is None and config is None:
        raise typer.BadParameter("an output folder is required", param_hint="--out")
    flags = {
        "out": out, "n": n, "seed": seed, "image_size": image_size, "price_noise": price_noise,
        "broken_frac": broken_frac, "base_url": base_url, "preview": preview, "workers": workers,
    }  # fmt: skip
    args = build_config(SynthArgs, config, overrides, flags=flags)
    csv_path = generate_catalog(args)
    typer.echo(f"wrote {csv_path} ({args.n} products)")
    if args.preview is not None:
        typer.echo(f"wrote {args.preview}")
