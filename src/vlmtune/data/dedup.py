"""Duplicate photos in a catalog: fingerprints, near pairs, and duplicate groups.

A photo's :class:`Fingerprint` has three parts:

- ``exact``: SHA-256 of the decoded RGB pixels and the size (not of the file bytes), so
  the same pixels saved again (another container, other metadata, a lossless format) are
  exact duplicates;
- ``phash``: the 64-bit perceptual hash of ``imagehash.phash`` (8x8 low frequencies of
  the DCT of a 32x32 grey thumbnail, each bit "above the median"). It survives JPEG
  re-encoding and resizing within 2 bits, but it is blind to colour and fine detail:
  on the synthetic catalog, distinct products of one silhouette (a navy and a camel polo
  shirt) hash 0 bits apart;
- ``colour``: an 8x8 RGB thumbnail (box filter, 192 bytes). Compared by the mean absolute
  difference of its levels, it tells those products apart (2,000 of them were at least 3.5
  levels apart) while a re-encoded or resized copy stays within 1.45.

Two photos are **near duplicates** when their pHashes are at most ``max_bits`` apart
**and** their thumbnails at most ``max_colour`` levels apart; the defaults were chosen by
measurement (``bench/bench_dedup_threshold.py``, figures in BENCHMARKS.md): every
re-encoded (JPEG 95 -> 60) and resized (x0.5, x1.5) copy matches and no two distinct
synthetic products do. Crops are the limit: 85 % of 1 %-per-side crops match, 30 % at 2 %,
none from 4 %, because a crop shifts the picture as much as the framing of two distinct
products of one type, material, pattern and colour differs (no threshold of pHash, dHash or
wHash separates those either). Candidates come from multi-index hashing
(:mod:`vlmtune.data.hash_index`), never an all-pairs loop.

:func:`group_duplicates` links rows that share a product id, share pixels, or are near
duplicates; the groups are the connected components of those links (scipy's
``connected_components``, a union-find in C), numbered deterministically.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.sparse import coo_array
from scipy.sparse.csgraph import connected_components

from vlmtune.data.hash_index import near_pairs

__all__ = [
    "COLOUR_SIDE",
    "DEFAULT_MAX_BITS",
    "DEFAULT_MAX_COLOUR",
    "Fingerprint",
    "colour_distance",
    "group_duplicates",
    "hamming",
    "image_fingerprint",
    "near_duplicate_pairs",
]

DEFAULT_MAX_BITS = 6
"""pHash bits two near duplicates may differ in (re-encodes and resizes measured at <= 4)."""
DEFAULT_MAX_COLOUR = 2.5
"""Mean level difference two near duplicates' thumbnails may have (copies <= 1.45, distinct >= 3.5)."""
COLOUR_SIDE = 8
"""Side of the colour thumbnail, pixels: ``COLOUR_SIDE**2 * 3`` bytes per photo."""
_COLOUR_BYTES = COLOUR_SIDE * COLOUR_SIDE * 3
_CHUNK = 1 << 16  # pairs whose thumbnails are compared at once


@dataclass(frozen=True)
class Fingerprint:
    """What :func:`group_duplicates` needs to know about one photo."""

    exact: str
    """SHA-256 (hex) of the width, height and decoded RGB pixels."""
    phash: int
    """64-bit perceptual hash (``imagehash.phash``), an int in ``[0, 2**64)``."""
    colour: bytes
    """``COLOUR_SIDE x COLOUR_SIDE`` RGB thumbnail, row-major, 3 bytes a pixel."""

    def to_dict(self) -> dict[str, str]:
        """JSON- and parquet-safe form: ``exact``, ``phash`` (16 hex digits), ``colour`` (hex)."""
        return {"exact": self.exact, "phash": f"{self.phash:016x}", "colour": self.colour.hex()}

    @classmethod
    def from_dict(cls, record: dict[str, str]) -> Fingerprint:
        """Inverse of :meth:`to_dict`."""
        return cls(record["exact"], int(record["phash"], 16), bytes.fromhex(record["colour"]))


def image_fingerprint(image: Image.Image) -> Fingerprint:
    """Fingerprint of ``image`` as the dataset will show it (pass the decoded, oriented RGB photo)."""
    import imagehash  # imports scipy: only when fingerprints are made

    rgb = image if image.mode == "RGB" else image.convert("RGB")
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}\n".encode())
    digest.update(rgb.tobytes())
    phash = int(str(imagehash.phash(rgb)), 16)
    thumb = rgb.resize((COLOUR_SIDE, COLOUR_SIDE), Image.Resampling.BOX)
    return Fingerprint(digest.hexdigest(), phash, thumb.tobytes())


def hamming(a: int, b: int) -> int:
    """Bits in which two 64-bit hashes differ."""
    return (a ^ b).bit_count()


def colour_distance(a: bytes, b: bytes) -> float:
    """Mean absolute difference (0-255 levels) of two thumbnails of the same size."""
    x, y = np.frombuffer(a, np.uint8), np.frombuffer(b, np.uint8)
    return float(np.abs(x.astype(np.int16) - y).mean())


def near_duplicate_pairs(
    fingerprints: Sequence[Fingerprint],
    max_bits: int = DEFAULT_MAX_BITS,
    max_colour: float = DEFAULT_MAX_COLOUR,
) -> np.ndarray:
    """Pairs ``(i, j)``, ``i < j``, within ``max_bits`` pHash bits and ``max_colour`` levels.

    Returns an int64 array of shape (P, 2), rows sorted. Each distinct pHash is searched
    once (:func:`~vlmtune.data.hash_index.near_pairs`); photos sharing a pHash, or whose
    pHashes are close, are then compared by their thumbnails.
    """
    if not fingerprints:
        return np.empty((0, 2), np.int64)
    if any(len(f.colour) != _COLOUR_BYTES for f in fingerprints):
        raise ValueError(f"colour thumbnails must have {_COLOUR_BYTES} bytes (image_fingerprint's)")
    hashes = np.array([f.phash for f in fingerprints], dtype=np.uint64)
    unique, inverse = np.unique(hashes, return_inverse=True)
    members = np.argsort(inverse, kind="stable")  # photos grouped by pHash
    starts = np.searchsorted(inverse[members], np.arange(len(unique) + 1))
    shared = np.flatnonzero(np.diff(starts) > 1)
    hash_pairs = np.concatenate([np.stack([shared, shared], axis=1), near_pairs(unique, max_bits)])
    pairs = _expand(hash_pairs, members, starts)
    thumbs = np.frombuffer(b"".join(f.colour for f in fingerprints), np.uint8)
    thumbs = thumbs.reshape(len(fingerprints), -1)
    close = _colour_close(pairs, thumbs, max_colour)
    return close[np.lexsort((close[:, 1], close[:, 0]))]


def group_duplicates(
    ids: Sequence[object],
    fingerprints: Sequence[Fingerprint | None],
    max_bits: int | None = DEFAULT_MAX_BITS,
    max_colour: float = DEFAULT_MAX_COLOUR,
) -> list[int]:
    """Duplicate group of each row: rows sharing an id, pixels, or a near-duplicate photo.

    ``ids`` and ``fingerprints`` have one entry per row (``None``: the row has no photo, it
    joins by id only). ``max_bits=None`` turns near duplicates off (ids and exact pixels
    only). The groups are the connected components of the graph of those links; they are
    numbered 0, 1, ... in the order of their smallest member id, so the numbering does not
    depend on the order of the rows.
    """
    if len(ids) != len(fingerprints):
        raise ValueError(f"{len(ids)} ids but {len(fingerprints)} fingerprints")
    if not ids:
        return []
    names = np.array([str(i) for i in ids])
    _, first_of_id, id_rank = np.unique(names, return_index=True, return_inverse=True)
    links = [np.stack([np.arange(len(ids)), first_of_id[id_rank]], axis=1)]
    photos = np.array([r for r, f in enumerate(fingerprints) if f is not None], dtype=np.int64)
    if len(photos):
        exact = np.array([fingerprints[r].exact for r in photos])
        _, first_of_exact, exact_class = np.unique(exact, return_index=True, return_inverse=True)
        links.append(np.stack([photos, photos[first_of_exact[exact_class]]], axis=1))
        if max_bits is not None:  # one photo per exact class: identical pixels are searched once
            reps = photos[first_of_exact]
            near = near_duplicate_pairs([fingerprints[r] for r in reps], max_bits, max_colour)
            links.append(reps[near])
    return _components_by_smallest_id(np.concatenate(links), id_rank)


# --------------------------------------------------------------------------- helpers


def _expand(hash_pairs: np.ndarray, members: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Photo pairs ``(i, j)``, ``i < j``, from pairs of pHash classes (a class paired with itself too).

    A class's photos are all compared with each other: equal pHashes with different pixels
    are rare (identical pixels reach here once, see :func:`group_duplicates`). Class ``k`` holds photos ``members[starts[k] : starts[k + 1]]``; shapes (H, 2) -> (P, 2).
    """
    sizes = np.diff(starts)
    size_a, size_b = sizes[hash_pairs[:, 0]], sizes[hash_pairs[:, 1]]
    counts = size_a * size_b
    which = np.repeat(np.arange(len(hash_pairs)), counts)
    k = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    i = members[starts[hash_pairs[which, 0]] + k // size_b[which]]
    j = members[starts[hash_pairs[which, 1]] + k % size_b[which]]
    pairs = np.stack([np.minimum(i, j), np.maximum(i, j)], axis=1)
    return pairs[pairs[:, 0] < pairs[:, 1]]


def _colour_close(pairs: np.ndarray, thumbs: np.ndarray, max_colour: float) -> np.ndarray:
    """The rows of ``pairs`` whose thumbnails are at most ``max_colour`` levels apart."""
    keep = np.zeros(len(pairs), dtype=bool)
    for start in range(0, len(pairs), _CHUNK):
        part = pairs[start : start + _CHUNK]
        diff = np.abs(thumbs[part[:, 0]].astype(np.int16) - thumbs[part[:, 1]])
        keep[start : start + _CHUNK] = diff.mean(axis=1) <= max_colour
    return pairs[keep]


def _components_by_smallest_id(links: np.ndarray, id_rank: np.ndarray) -> list[int]:
    """Connected component of each row given (L, 2) row links, numbered by smallest id rank.

    Rows with one id are linked, so two components never share their smallest id.
    """
    n = len(id_rank)
    graph = coo_array((np.ones(len(links), np.int8), (links[:, 0], links[:, 1])), shape=(n, n))
    count, labels = connected_components(graph, directed=False)
    smallest = np.full(count, n, dtype=np.int64)
    np.minimum.at(smallest, labels, id_rank)
    return np.unique(smallest, return_inverse=True)[1][labels].tolist()
