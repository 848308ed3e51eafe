"""Reading an image dataset written by ``vlmtune prepare``.

A prepared dataset is a folder holding ``dataset.parquet`` (the catalog's
columns plus ``local_image_path`` relative to the folder, ``image_width``,
``image_height``, ``image_sha256``, ``split`` and, since duplicate groups,
``duplicate_group`` with the photo's fingerprint), the ``images/`` it points
to, and ``vlmtune_dataset.json`` recording which catalog columns hold the id,
title, category, price and image reference. Training, evaluation and the demo
read it only through :func:`load_prepared`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from vlmtune.data.catalog import CatalogColumns
from vlmtune.utils.errors import UserError

__all__ = ["DATASET_INFO", "PreparedDataset", "PreparedDatasetError", "load_prepared"]

DATASET_INFO = "vlmtune_dataset.json"
REQUIRED = ("local_image_path", "image_width", "image_height", "image_sha256", "split")


class PreparedDatasetError(UserError, ValueError):
    """The folder is not a complete prepared dataset, or lacks the split asked for."""


@dataclass
class PreparedDataset:
    """Rows of a prepared dataset (optionally one split) and where their images are."""

    root: Path
    frame: pd.DataFrame
    columns: CatalogColumns

    def __len__(self) -> int:
        return len(self.frame)

    def image_paths(self) -> list[Path]:
        """Absolute image path of every row, in order."""
        return [self.root / p for p in self.frame["local_image_path"]]


def load_prepared(root: str | Path, split: str | None = None) -> PreparedDataset:
    """Load ``root``'s manifest, keeping only ``split`` (``train``/``val``/``test``) when given."""
    root = Path(root)
    manifest = root / "dataset.parquet"
    if not manifest.is_file():
        raise PreparedDatasetError(
            f"{str(root)!r} is not a prepared dataset: {manifest.name} is missing (run `vlmtune prepare`)"
        )
    frame = pd.read_parquet(manifest)
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise PreparedDatasetError(f"{str(manifest)!r} lacks the column(s) {', '.join(missing)}")
    columns = _read_columns(root)
    if split is not None:
        available = sorted(set(frame["split"]))
        if split not in available:
            raise PreparedDatasetError(
                f"split {split!r} is empty or unknown in {str(root)!r}; it has {', '.join(available) or 'no rows'}"
            )
        frame = frame[frame["split"] == split].reset_index(drop=True)
    return PreparedDataset(root=root, frame=frame, columns=columns)


def _read_columns(root: Path) -> CatalogColumns:
    info_path = root / DATASET_INFO
    if not info_path.is_file():
        return CatalogColumns()
    info = json.loads(info_path.read_text(encoding="utf-8"))
    return CatalogColumns(**info.get("columns", {}))
