"""Synthetic product catalog with the DBQ schema: real JPEG photos whose visible attributes decide the listing.

- :mod:`.vocab`: product types, materials, patterns, colours, the title rule and the price function;
- :mod:`.shapes`: the silhouette of each type; :mod:`.render`: one photo from its parameters;
- :mod:`.generate`: :func:`generate_catalog` (catalog.csv + images/ + synth_report.json);
- :mod:`.preview`: :func:`write_contact_sheet`; :mod:`.serve`: :func:`serve_directory`.
"""

from vlmtune.data.synthetic.generate import (
    DBQ_COLUMNS,
    SynthArgs,
    SyntheticProduct,
    generate_catalog,
    sample_product,
)
from vlmtune.data.synthetic.preview import write_contact_sheet
from vlmtune.data.synthetic.render import RenderParams, render_jpeg, render_product
from vlmtune.data.synthetic.serve import ImageServer, ServeError, serve_directory

__all__ = [
    "DBQ_COLUMNS",
    "ImageServer",
    "RenderParams",
    "ServeError",
    "SynthArgs",
    "SyntheticProduct",
    "generate_catalog",
    "render_jpeg",
    "render_product",
    "sample_product",
    "serve_directory",
    "write_contact_sheet",
]
