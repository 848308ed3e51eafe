"""``vlmtune synth``: write an offline synthetic product catalog whose photos decide the listing.

Products (scarves, tote bags, sneakers, trench coats, caps, ...) are drawn with a
visible material texture, pattern and colour; the title is "{Pattern} {Material}
{Type}", category3_code follows the type and the full price is a documented
function of type, material and pattern. A small share of rows gets broken image
references (N.A. or a missing file), like real exports. Writes OUT/catalog.csv,
OUT/images/ and OUT/synth_report.json (DBQ columns).
"""

from __future__ import annotations

import click

from vlmtune.data.synthetic import SynthArgs

__all__ = ["CONFIG", "run"]

CONFIG = SynthArgs


def run(args: SynthArgs) -> None:
    from vlmtune.data.synthetic import generate_catalog

    csv_path = generate_catalog(args)
    click.echo(f"wrote {csv_path} ({args.n} products)")
    if args.preview is not None:
        click.echo(f"wrote {args.preview}")
