"""vlmtune: fine-tune Phi-3-Vision on product catalogs.

From a catalog (title, category codes, prices, an image URL per product) to a
model that writes ``Product: {title}, Category: {category3_code}, Full Price:
{full_price}`` from the photo alone. See DESIGN.md for the data flow.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
