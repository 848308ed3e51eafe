"""``generate_catalog``: a synthetic DBQ-schema catalog (CSV + JPEG images) written to a folder.

Each product ``i`` draws all of its randomness from ``numpy.random.default_rng([seed, i])``,
so the catalog does not depend on how the work is split across processes: the
same seed and arguments give byte-identical ``catalog.csv`` and images (on the
same numpy / Pillow / libjpeg versions). Rows picked for ``broken_frac`` get image
references that fail the way real exports do: ``N.A.`` or a reference to a file
that does not exist; their images are not written. Rows picked for ``duplicate_frac``
re-list another product under their own code, with its photo as is or slightly
changed (:mod:`.duplicates`), so ``prepare``'s duplicate groups have work to do.

The output folder follows :mod:`vlmtune.utils.outputs`: it is claimed before
anything is drawn (missing, empty, or an earlier ``synth`` output, marked or
from before markers; a folder holding anything else needs ``--overwrite``). A missing or empty folder is marked
and filled in place; an existing one is rebuilt beside it and swapped in
whole, so an interrupted run leaves the earlier catalog intact.
"""

from __future__ import annotations

import csv
import io
import math
import os
import platform
import re
import time
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from vlmtune.data.synthetic.duplicates import CHANGES, Copy, apply_change, plan_duplicates
from vlmtune.data.synthetic.render import RenderParams, render_jpeg
from vlmtune.data.synthetic.vocab import (
    COLOURS,
    EUR_PER_USD,
    MATERIAL_COLOURS,
    MATERIALS,
    PATTERN_FACTOR,
    PATTERNS,
    PRODUCT_TYPES,
    all_titles,
    list_price,
    price_point,
    title_for,
)
from vlmtune.utils.config import flag
from vlmtune.utils.io import atomic_write_json, atomic_write_text
from vlmtune.utils.logging import get_logger
from vlmtune.utils.outputs import claim_output_dir, replace_dir, write_marker

__all__ = ["DBQ_COLUMNS", "SynthArgs", "SyntheticProduct", "generate_catalog", "sample_product"]

DBQ_COLUMNS: tuple[str, ...] = (
    "website_name", "competence_date", "country_code", "currency_code", "brand",
    "category1_code", "category2_code", "category3_code", "product_code", "title",
    "itemurl", "imageurl", "full_price", "price", "full_price_eur", "price_eur", "flg_discount",
)  # fmt: skip
"""The DBQ product-price export columns, in their order."""

WEBSITE = "www.maison-synthetique.example"
BRAND = "MAISON SYNTHETIQUE"
COUNTRY = "USA"
CURRENCY = "USD"
COMPETENCE_DATE = "2024-03-15"
DISCOUNT_RATE = 0.15
"""Share of products on sale (price below full price)."""
MAX_PRODUCTS = 999_999
VERB = "synth"
_OUTPUT_NAMES = {"catalog.csv", "images", "synth_report.json"}
_SIZE = re.compile(r"^(\d+)x(\d+)$")
_log = get_logger(__name__)


@dataclass
class SynthArgs:
    """What ``vlmtune synth`` generates."""

    out: Path = flag("--out")
    """Output folder: receives catalog.csv, images/ and synth_report.json."""
    n: int = flag("--n", default=2000)
    """Number of products (rows)."""
    seed: int = flag("--seed", default=0)
    """Seed; the same seed and arguments give the same bytes."""
    image_size: str = flag("--image-size", default="448x560")
    """Image size as WIDTHxHEIGHT (portrait by default, like product photography)."""
    price_noise: float = flag("--price-noise", default=0.0)
    """Sigma of the multiplicative log-normal price noise (0 = price fully determined by the photo)."""
    broken_frac: float = flag("--broken-frac", default=0.02)
    """Fraction of rows whose image reference fails (half ``N.A.``, half a missing file)."""
    duplicate_frac: float = flag("--duplicate-frac", default=0.0)
    """Fraction of rows that re-list another product (its title, category and price) under their own
    code, with its photo as is, re-encoded, resized or slightly cropped (0-0.5)."""
    base_url: str | None = flag("--base-url", default=None)
    """If set, imageurl = base_url + relative path (e.g. http://127.0.0.1:8000/)."""
    preview: Path | None = flag("--preview", default=None)
    """If set, also write a contact sheet PNG here."""
    workers: int = flag("--workers", default=0)
    """Processes drawing images (0 = all cores)."""
    overwrite: bool = flag("--overwrite", default=False)
    """Replace what ``--out`` holds even when it is not an earlier synth output."""

    def __post_init__(self) -> None:
        if not str(self.out).strip():
            raise ValueError("out is required: the output folder (--out)")
        self.out = Path(self.out)
        if self.preview is not None:
            self.preview = Path(self.preview)
        if not 1 <= self.n <= MAX_PRODUCTS:
            raise ValueError(f"n must be between 1 and {MAX_PRODUCTS}, got {self.n}")
        self.size  # noqa: B018 - validates image_size
        if not 0.0 <= self.price_noise <= 1.0:
            raise ValueError(f"price_noise must be between 0 and 1, got {self.price_noise}")
        if not 0.0 <= self.broken_frac < 1.0:
            raise ValueError(f"broken_frac must be in [0, 1), got {self.broken_frac}")
        if not 0.0 <= self.duplicate_frac <= 0.5:
            raise ValueError(f"duplicate_frac must be in [0, 0.5], got {self.duplicate_frac}")
        if self.base_url is not None and not re.match(r"^https?://[^/\s]+", self.base_url):
            raise ValueError(f"base_url must be an http:// or https:// URL, got {self.base_url!r}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0 (0 = all cores), got {self.workers}")

    @property
    def size(self) -> tuple[int, int]:
        """Image (width, height) parsed from ``image_size``."""
        match = _SIZE.match(str(self.image_size).strip())
        if not match:
            raise ValueError(
                f"image_size must look like WIDTHxHEIGHT (e.g. 448x560), got {self.image_size!r}"
            )
        width, height = int(match.group(1)), int(match.group(2))
        if not (32 <= width <= 4096 and 32 <= height <= 4096):
            raise ValueError(
                f"image_size sides must be between 32 and 4096 pixels, got {self.image_size!r}"
            )
        return width, height


@dataclass(frozen=True)
class SyntheticProduct:
    """One row of the catalog and the parameters of its photo."""

    index: int
    product_code: str
    type_key: str
    category1: str
    material: str
    pattern: str
    colour: str
    title: str
    full_price: float
    price: float
    render: RenderParams = field(repr=False)


def sample_product(seed: int, index: int, price_noise: float = 0.0) -> SyntheticProduct:
    """Product ``index`` of the catalog with ``seed`` (independent of every other product)."""
    rng = np.random.default_rng([seed, index])
    ptype = PRODUCT_TYPES[int(rng.integers(len(PRODUCT_TYPES)))]
    material = ptype.materials[int(rng.integers(len(ptype.materials)))]
    pattern = ptype.patterns[int(rng.integers(len(ptype.patterns)))]
    palette = MATERIAL_COLOURS[material]
    colour = palette[int(rng.integers(len(palette)))]
    category1 = ptype.audiences[int(rng.integers(len(ptype.audiences)))]
    noise = math.exp(price_noise * float(rng.standard_normal()))
    full_price = float(list_price(ptype, material, pattern, noise))
    on_sale = bool(rng.random() < DISCOUNT_RATE)
    price = (
        float(min(full_price, price_point(full_price * rng.uniform(0.6, 0.8))))
        if on_sale
        else full_price
    )
    grey, beige = rng.uniform(222, 250), rng.uniform(0, 1)
    render = RenderParams(
        type_key=ptype.key, material=material, pattern=pattern, colour=colour,
        scale=float(rng.uniform(0.75, 0.9)), pos_x=float(rng.uniform(0.35, 0.65)),
        pos_y=float(rng.uniform(0.35, 0.65)), angle=float(rng.uniform(-4, 4)),
        background=(round(min(255.0, grey + 4 * beige)), round(grey), round(grey - 10 * beige)),
        light_angle=float(rng.uniform(0, 2 * math.pi)), light_strength=float(rng.uniform(0.02, 0.07)),
        quality=int(rng.integers(80, 96)), noise_seed=int(rng.integers(2**31)),
    )  # fmt: skip
    code = f"8{seed % 10}{index:06d}"
    return SyntheticProduct(
        index, code, ptype.key, category1, material, pattern, colour,
        title_for(ptype, material, pattern), full_price, price, render,
    )  # fmt: skip


def generate_catalog(args: SynthArgs) -> Path:
    """Write ``args.out``/catalog.csv, images/ and synth_report.json; return the CSV path.

    Raises :class:`~vlmtune.utils.outputs.OutputError` before any work when
    ``args.out`` may not be written (see the module docstring).
    """
    claim = claim_output_dir(args.out, VERB, overwrite=args.overwrite, legacy=_is_legacy_output)
    preview = Path(args.preview).resolve() if args.preview is not None else None
    if claim.existed:
        with replace_dir(claim.path, VERB) as staging:
            _generate(args, staging)
    else:
        write_marker(claim.path, VERB)
        _generate(args, claim.path)
    if preview is not None:
        from vlmtune.data.synthetic.preview import write_contact_sheet

        write_contact_sheet(claim.path, preview)
    return claim.path / "catalog.csv"


def _is_legacy_output(folder: Path) -> bool:
    """A synth output written before markers existed: only synth's files, its report among them."""
    names = {entry.name for entry in folder.iterdir()}
    return "synth_report.json" in names and names <= _OUTPUT_NAMES


def _generate(args: SynthArgs, out: Path) -> None:
    """Draw every image into ``out``/images, then write catalog.csv and synth_report.json."""
    start = time.perf_counter()
    size = args.size
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    products = [sample_product(args.seed, i, args.price_noise) for i in range(args.n)]
    broken = _broken_rows(args.seed, args.n, args.broken_frac)
    copies = plan_duplicates(args.seed, args.n, args.duplicate_frac, set(broken))
    for i, copy in copies.items():  # a re-listed product: the source's listing, its own code
        products[i] = replace(products[copy.source], index=i, product_code=products[i].product_code)
    jobs = [
        (p.render, size, str(images / f"{p.product_code}.jpg"))
        for p in products
        if p.index not in broken and p.index not in copies
    ]
    workers = _draw_all(jobs, args.workers)
    _copy_photos(copies, products, images)
    rows = [_row(p, broken.get(p.index), args.base_url) for p in products]
    _write_csv(out / "catalog.csv", rows)
    seconds = time.perf_counter() - start
    report = _report(args, products, broken, len(jobs) + len(copies), seconds, workers)
    report["duplicates"] = {
        "rows": len(copies),
        "by_change": {c: sum(k.change == c for k in copies.values()) for c in CHANGES},
        "copies": [[products[k.index].product_code, products[k.source].product_code, k.change]
                   for k in copies.values()],
    }  # fmt: skip
    atomic_write_json(out / "synth_report.json", report)
    _log.info("synth: %d products, %d images in %.1fs (%.0f images/s) -> %s",
              args.n, len(jobs), seconds, report["images_per_s"], args.out)  # fmt: skip


# --------------------------------------------------------------------------- helpers


def _broken_rows(seed: int, n: int, frac: float) -> dict[int, str]:
    """Row index -> kind of failure (``na`` or ``missing``), alternating so both kinds appear."""
    count = round(frac * n)
    if count == 0:
        return {}
    rng = np.random.default_rng([seed, 2**32 - 1])  # a stream no product index uses
    picked = sorted(int(i) for i in rng.choice(n, size=count, replace=False))
    return {i: ("na" if k % 2 == 0 else "missing") for k, i in enumerate(picked)}


def _copy_photos(copies: dict[int, Copy], products: list[SyntheticProduct], images: Path) -> None:
    """Write each copy's photo: its source's, changed as planned."""
    for copy in copies.values():
        data = (images / f"{products[copy.source].product_code}.jpg").read_bytes()
        target = images / f"{products[copy.index].product_code}.jpg"
        tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
        tmp.write_bytes(apply_change(data, copy.change))
        os.replace(tmp, target)


def _draw_one(job: tuple[RenderParams, tuple[int, int], str]) -> int:
    params, size, path = job
    data = render_jpeg(params, size)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)  # never a half-written image under the final name
    return len(data)


def _draw_all(jobs: list, workers: int) -> int:
    """Draw every image; returns the number of processes used."""
    workers = workers or os.cpu_count() or 1
    workers = max(1, min(workers, math.ceil(len(jobs) / 32)))
    if workers == 1:
        for job in jobs:
            _draw_one(job)
        return 1
    with get_context("fork" if hasattr(os, "fork") else "spawn").Pool(workers) as pool:
        for _ in pool.imap_unordered(_draw_one, jobs, chunksize=16):
            pass
    return workers


def _row(p: SyntheticProduct, broken: str | None, base_url: str | None) -> dict[str, Any]:
    ptype = next(t for t in PRODUCT_TYPES if t.key == p.type_key)
    relative = f"images/{p.product_code}.jpg"
    if broken == "missing":
        relative = f"images/{p.product_code}_missing.jpg"
    url = (base_url.rstrip("/") + "/" + relative) if base_url else relative
    slug = re.sub(r"[^a-z0-9]+", "-", p.title.lower()).strip("-")
    return {
        "website_name": WEBSITE,
        "competence_date": COMPETENCE_DATE,
        "country_code": COUNTRY,
        "currency_code": CURRENCY,
        "brand": BRAND,
        "category1_code": p.category1,
        "category2_code": ptype.category2,
        "category3_code": ptype.category3,
        "product_code": p.product_code,
        "title": p.title,
        "itemurl": f"https://{WEBSITE}/us/{slug}-p{p.product_code}",
        "imageurl": "N.A." if broken == "na" else url,
        "full_price": p.full_price,
        "price": p.price,
        "full_price_eur": round(p.full_price * EUR_PER_USD, 2),
        "price_eur": round(p.price * EUR_PER_USD, 2),
        "flg_discount": int(p.price < p.full_price),
    }


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=DBQ_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buf.getvalue())


def _report(args, products, broken, n_images, seconds, workers) -> dict[str, Any]:
    clean = {p.index: list_price(_type(p.type_key), p.material, p.pattern) for p in products}
    noise_mape = float(
        np.mean([abs(p.full_price - clean[p.index]) / p.full_price for p in products])
    )
    return {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(args).items()},
        "rows": args.n,
        "images_written": n_images,
        "broken": {
            "na": sum(k == "na" for k in broken.values()),
            "missing": sum(k == "missing" for k in broken.values()),
        },  # fmt: skip
        "seconds": round(seconds, 3),
        "images_per_s": round(n_images / seconds, 1) if seconds > 0 else None,
        "workers": workers,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "distinct_titles_in_catalog": len({p.title for p in products}),
        "price_noise_mape": round(noise_mape, 5),
        "vocab": _vocab(),
    }


def _vocab() -> dict[str, Any]:
    return {
        "types": {
            t.key: {
                "name": t.name,
                "category2": t.category2,
                "category3": t.category3,
                "category1": list(t.audiences),
                "materials": list(t.materials),
                "patterns": list(t.patterns),
                "base_price": t.base_price,
            }
            for t in PRODUCT_TYPES
        },  # fmt: skip
        "materials": {k: {"title_word": w, "price_factor": f} for k, (w, f) in MATERIALS.items()},
        "patterns": {
            k: {"title_word": PATTERNS[k], "price_factor": f} for k, f in PATTERN_FACTOR.items()
        },
        "colours": {k: list(v) for k, v in COLOURS.items()},
        "material_colours": {k: list(v) for k, v in MATERIAL_COLOURS.items()},
        "titles": all_titles(),
        "eur_per_usd": EUR_PER_USD,
        "price_function": "price_point(base_price[type] * material_factor * pattern_factor * exp(price_noise * z))",
    }


def _type(key: str):
    return next(t for t in PRODUCT_TYPES if t.key == key)
