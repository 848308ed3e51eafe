"""Duplicate photos: exact and near fingerprints, groups, splits by group, conflicts, on synthetic photos."""

from __future__ import annotations

import io
import random

import pytest
from PIL import Image

from vlmtune.data.conflicts import find_conflicts, resolve_conflicts
from vlmtune.data.dedup import (
    DEFAULT_MAX_BITS,
    Fingerprint,
    group_duplicates,
    hamming,
    image_fingerprint,
    near_duplicate_pairs,
)
from vlmtune.data.group_splits import assign_group_splits, straddling_groups
from vlmtune.data.splits import assign_splits
from vlmtune.data.synthetic import render_jpeg, render_product, sample_product

SIZE = (224, 280)  # the demo's photo size, where the thresholds were measured
FRACTIONS = (0.5, 0.25, 0.25)


def _decode(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return _decode(buf.getvalue())


def _catalog_photo(index: int) -> Image.Image:
    """Product ``index`` of the seed-0 synthetic catalog, as ``synth`` stores it (JPEG q95 here)."""
    return _jpeg(render_product(sample_product(0, index).render, SIZE), 95)


def _straddling_ids(count: int) -> list[str]:
    """``count`` ids that the per-id split does not put all in one split (so grouping must act)."""
    for start in range(100):
        ids = [f"dup-{start}-{k}" for k in range(count)]
        if len(set(assign_splits(ids, FRACTIONS))) > 1:
            return ids
    raise AssertionError("no straddling ids found")


def test_exact_fingerprint_hashes_pixels_not_file_bytes():
    photo = _catalog_photo(0)
    as_png, as_bmp = io.BytesIO(), io.BytesIO()
    photo.save(as_png, format="PNG")
    photo.save(as_bmp, format="BMP")
    fingerprints = [image_fingerprint(_decode(b.getvalue())) for b in (as_png, as_bmp)]
    assert fingerprints[0] == fingerprints[1]
    changed = photo.copy()
    changed.putpixel((5, 5), (0, 0, 0))
    assert image_fingerprint(changed).exact != fingerprints[0].exact
    assert Fingerprint.from_dict(fingerprints[0].to_dict()) == fingerprints[0]


def test_reencoded_resized_and_cropped_copies_under_other_ids_form_one_group():
    photo = _catalog_photo(0)
    w, h = photo.size
    copies = [
        photo,
        _jpeg(photo, 60),  # re-encoded
        photo.resize((w // 2, h // 2), Image.LANCZOS),  # resized
        photo.crop((2, 3, w - 2, h - 3)),  # cropped by 1 % on each side
    ]
    others = [_catalog_photo(i) for i in range(1, 21)]
    ids = [*_straddling_ids(4), *(f"other-{i}" for i in range(20))]
    groups = group_duplicates(ids, [image_fingerprint(p) for p in copies + others])
    assert len(set(groups[:4])) == 1
    assert len(set(groups)) == 21  # the 20 other products stay apart
    splits = assign_group_splits(ids, groups, FRACTIONS)
    assert len(set(splits[:4])) == 1 and straddling_groups(groups, splits) == []
    assert straddling_groups(groups, assign_splits(ids, FRACTIONS)) == [groups[0]]


def test_same_photo_with_two_prices_is_one_group_and_a_conflict():
    data = render_jpeg(sample_product(0, 3).render, SIZE)
    rows = [
        {"product_code": "A1", "title": "Wallet", "category3_code": "WALLETS", "full_price": "450"},
        {"product_code": "B7", "title": "Wallet", "category3_code": "WALLETS", "full_price": 520.0},
        {
            "product_code": "C2",
            "title": "Belt",
            "category3_code": "BELTS",
            "full_price": "1,200.00",
        },
        {"product_code": "C2", "title": "Belt", "category3_code": "BELTS", "full_price": 1200},
    ]  # C2 twice: two snapshots of one product (another photo each), which agree
    photos = [_decode(data), _decode(data), _catalog_photo(7), _catalog_photo(8)]
    groups = group_duplicates(
        [r["product_code"] for r in rows], [image_fingerprint(p) for p in photos]
    )
    assert groups == [0, 0, 1, 1]
    conflicts = find_conflicts(rows, groups)
    assert [(c.group, c.rows, c.fields) for c in conflicts] == [(0, (0, 1), ("full_price",))]
    assert resolve_conflicts(rows, conflicts, "keep") == [0, 1, 2, 3]
    assert resolve_conflicts(rows, conflicts, "drop-group") == [2, 3]
    assert resolve_conflicts(rows, conflicts, "first") == [0, 2, 3]


def test_distinct_synthetic_products_do_not_collide():
    products = [sample_product(1, i) for i in range(300)]
    fingerprints = [image_fingerprint(_decode(render_jpeg(p.render, SIZE))) for p in products]
    groups = group_duplicates([p.product_code for p in products], fingerprints)
    assert sorted(groups) == list(range(300))
    # the colour thumbnail does the work here: pHash alone puts some of them within reach
    close = sum(
        hamming(a.phash, b.phash) <= DEFAULT_MAX_BITS
        for k, a in enumerate(fingerprints)
        for b in fingerprints[k + 1 :]
    )
    assert close > 0


def test_grouping_is_deterministic_and_independent_of_row_order():
    photo = _catalog_photo(0)
    prints = [image_fingerprint(p) for p in (photo, _jpeg(photo, 60), _catalog_photo(1))]
    prints += [image_fingerprint(_catalog_photo(2)), None]
    ids = ["z9", "b2", "m5", "m5", "a1"]  # m5: two snapshots, two photos; a1: no photo
    groups = group_duplicates(ids, prints)
    assert groups == [1, 1, 2, 2, 0]  # numbered by smallest member id: a1, b2, m5
    order = list(range(5))
    random.Random(0).shuffle(order)
    shuffled = group_duplicates([ids[r] for r in order], [prints[r] for r in order])
    assert shuffled == [groups[r] for r in order]
    assert group_duplicates(ids, prints, max_bits=None) == [3, 1, 2, 2, 0]  # exact and ids only


def test_group_duplicates_checks_lengths():
    with pytest.raises(ValueError, match="2 ids but 1 fingerprints"):
        group_duplicates(["a", "b"], [None])


def test_near_duplicate_pairs_refuses_thumbnails_of_another_size():
    good = image_fingerprint(_catalog_photo(0))
    bad = Fingerprint(good.exact, good.phash, good.colour[:48])
    with pytest.raises(ValueError, match="192 bytes"):
        near_duplicate_pairs([good, bad])
