"""Phi-3-Vision image processor: the HD transform, written without torchvision.

Follows Microsoft's official Phi-3-V remote code (``image_processing_phi3_v.py``) step by step:

1. convert to RGB (transparency composited onto white); transpose portrait images (width < height) so the long side is horizontal;
2. pick the largest ``scale`` with ``scale * ceil(scale / ratio) <= num_crops``; resize (PIL
   bilinear, exactly what torchvision's PIL resize calls) to ``scale * S`` wide;
3. pad with white, centred vertically, to a multiple of the crop size S; transpose back;
4. ``ToTensor`` + CLIP mean/std normalisation (the same float32 operations, so the same values);
5. the global view is a bicubic interpolation (``torch.nn.functional.interpolate``) of the
   normalised image to S x S;
6. ``pixel_values`` per image: global view first, then the crops row by row, zero crops up to
   ``num_crops + 1``.

Tokens per image with an ``h x w`` crop grid: ``(h*w + 1) * T + 1 + (h + 1) * sqrt(T)`` with
``T = (S / patch / 2) ** 2`` (144 for S=336, patch 14).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor

__all__ = [
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "HDGeometry",
    "Phi3VImageProcessor",
    "hd_geometry",
]

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class HDGeometry:
    """Where the HD transform puts an image of a given size.

    ``transposed``: the image is portrait and is processed transposed.
    ``resized_w``/``resized_h``: size after the resize, in the (possibly transposed) frame.
    ``padded_h``: height after white padding, in the same frame.
    ``height``/``width``: the final ``image_sizes`` entry (original orientation), multiples of S.
    """

    transposed: bool
    resized_w: int
    resized_h: int
    padded_h: int
    height: int
    width: int


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited onto white: what transformers' ``convert_to_rgb``
    (called by the official processor) does."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def hd_geometry(width: int, height: int, num_crops: int, crop_size: int = 336) -> HDGeometry:
    """Compute the HD transform's sizes for a ``width x height`` image (official arithmetic)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if num_crops < 1:
        raise ValueError(f"num_crops must be >= 1, got {num_crops}")
    given = f"{width}x{height}"  # width x height as the caller gave them, for messages
    transposed = width < height
    if transposed:
        width, height = height, width
    ratio = width / height
    scale = 1
    while scale * np.ceil(scale / ratio) <= num_crops:
        scale += 1
    scale -= 1
    new_w = int(scale * crop_size)
    new_h = int(new_w / ratio)
    if new_h < 1:
        resized = f"{new_h}x{new_w}" if transposed else f"{new_w}x{new_h}"
        raise ValueError(
            f"image of {given} (width x height) is too elongated: the HD transform would resize "
            f"it to {resized} at num_crops={num_crops}"
        )
    padded_h = int(np.ceil(new_h / crop_size) * crop_size)
    if transposed:
        return HDGeometry(True, new_w, new_h, padded_h, height=new_w, width=padded_h)
    return HDGeometry(False, new_w, new_h, padded_h, height=padded_h, width=new_w)


class Phi3VImageProcessor(BaseImageProcessor):
    """HD image processor of Phi-3-V.

    ``__call__(images, return_tensors="pt")`` returns a ``BatchFeature`` with
    ``pixel_values`` [num_images, num_crops + 1, 3, S, S] float32, ``image_sizes``
    [num_images, 2] long (height, width after the HD transform) and ``num_img_tokens``
    [num_images] long.
    """

    model_input_names = ["pixel_values", "image_sizes"]

    def __init__(
        self,
        num_crops: int = 1,
        image_mean: Sequence[float] = OPENAI_CLIP_MEAN,
        image_std: Sequence[float] = OPENAI_CLIP_STD,
        do_convert_rgb: bool = True,
        crop_size: int = 336,
        patch_size: int = 14,
        **kwargs,
    ) -> None:
        if isinstance(crop_size, dict):  # transformers-style {"height": S, "width": S}
            crop_size = int(crop_size.get("height", crop_size.get("shortest_edge", 336)))
        kwargs.pop("num_img_tokens", None)  # derived from crop_size / patch_size
        super().__init__(**kwargs)
        if int(num_crops) < 1:
            raise ValueError(f"num_crops must be >= 1, got {num_crops}")
        if int(crop_size) % int(patch_size) or (int(crop_size) // int(patch_size)) % 2:
            raise ValueError(
                f"crop_size={crop_size} / patch_size={patch_size} must be an even integer "
                "(the model merges patches 2x2)"
            )
        self.num_crops = int(num_crops)
        self.image_mean = [float(v) for v in image_mean]
        self.image_std = [float(v) for v in image_std]
        self.do_convert_rgb = bool(do_convert_rgb)
        self.crop_size = int(crop_size)
        self.patch_size = int(patch_size)
        self.num_img_tokens = self.tokens_per_crop

    @property
    def tokens_per_crop(self) -> int:
        """Image tokens one crop gives after the 2x2 merge (144 for S=336, patch 14)."""
        return (self.crop_size // self.patch_size // 2) ** 2

    def num_tokens_for_size(self, width: int, height: int, num_crops: int | None = None) -> int:
        """Number of image placeholder tokens for an image of ``width x height`` pixels."""
        geo = hd_geometry(width, height, num_crops or self.num_crops, self.crop_size)
        rows, cols = geo.height // self.crop_size, geo.width // self.crop_size
        side = int(math.isqrt(self.tokens_per_crop))
        return (rows * cols + 1) * self.tokens_per_crop + 1 + (rows + 1) * side

    def num_image_tokens(self, image: Image.Image, num_crops: int | None = None) -> int:
        """Number of placeholder tokens ``image`` gets (no pixel work)."""
        return self.num_tokens_for_size(image.width, image.height, num_crops)

    def preprocess(
        self,
        images: Image.Image | Sequence[Image.Image],
        return_tensors: str | None = "pt",
        num_crops: int | None = None,
        **kwargs,
    ) -> BatchFeature:
        """HD-transform ``images`` (PIL). See the class docstring for the outputs."""
        if kwargs:
            raise TypeError(f"unexpected arguments: {sorted(kwargs)}")
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors={return_tensors!r}: only 'pt' is supported")
        if isinstance(images, Image.Image):
            images = [images]
        crops = int(num_crops or self.num_crops)
        if not images:
            raise ValueError("no images given to the image processor")
        size = self.crop_size
        pixel_values = torch.empty(len(images), crops + 1, 3, size, size, dtype=torch.float32)
        sizes, tokens = [], []
        for index, image in enumerate(images):
            geo = self._transform_one(image, crops, pixel_values[index])
            sizes.append([geo.height, geo.width])
            tokens.append(self.num_tokens_for_size(image.width, image.height, crops))
        data = {
            "pixel_values": pixel_values,
            "image_sizes": torch.tensor(sizes, dtype=torch.long),
            "num_img_tokens": torch.tensor(tokens, dtype=torch.long),
        }
        return BatchFeature(data=data)

    def _transform_one(self, image: Image.Image, num_crops: int, out: torch.Tensor) -> HDGeometry:
        """Write one image's [num_crops + 1, 3, S, S] crops into ``out``; return its geometry."""
        if not isinstance(image, Image.Image):
            raise TypeError(f"images must be PIL images, got {type(image).__name__}")
        if self.do_convert_rgb:
            image = to_rgb(image)
        elif image.mode != "RGB":
            raise ValueError(f"image mode {image.mode!r} is not RGB and do_convert_rgb is false")
        geo = hd_geometry(image.width, image.height, num_crops, self.crop_size)
        hd = self._hd_tensor(image, geo)
        size = self.crop_size
        rows, cols = geo.height // size, geo.width // size
        if rows == cols == 1:  # bicubic resampling to the same size is the identity, bit for bit
            out[0].copy_(hd)
        else:
            out[0] = F.interpolate(hd[None], size=(size, size), mode="bicubic")[0]
        grid = hd.view(3, rows, size, cols, size).permute(1, 3, 0, 2, 4)
        out[1 : 1 + rows * cols].view(rows, cols, 3, size, size).copy_(grid)
        out[1 + rows * cols :].zero_()
        return geo

    def _hd_tensor(self, image: Image.Image, geo: HDGeometry) -> torch.Tensor:
        """Resized, white-padded, normalised image: [3, height, width] float32.

        The official code transposes a portrait image, resizes it (PIL: horizontal pass, then
        vertical pass) and transposes back. Two single-axis PIL resizes of the untransposed image
        in the swapped order run the same passes with the same fixed-point kernels, so they give
        the same bytes without the two transposes.
        """
        bilinear = Image.Resampling.BILINEAR
        if geo.transposed:
            tall = image.resize((image.width, geo.resized_w), bilinear)
            resized = np.asarray(tall.resize((geo.resized_h, geo.resized_w), bilinear))
            canvas = np.full((geo.resized_w, geo.padded_h, 3), 255, dtype=np.uint8)
            left = int((geo.padded_h - geo.resized_h) / 2)
            canvas[:, left : left + geo.resized_h] = resized
        else:
            resized = np.asarray(image.resize((geo.resized_w, geo.resized_h), bilinear))
            canvas = np.full((geo.padded_h, geo.resized_w, 3), 255, dtype=np.uint8)
            top = int((geo.padded_h - geo.resized_h) / 2)
            canvas[top : top + geo.resized_h] = resized
        planes = torch.from_numpy(np.ascontiguousarray(canvas.transpose(2, 0, 1)))
        # The same float32 ops as torchvision's ToTensor + Normalize, hence the same values.
        mean = torch.tensor(self.image_mean, dtype=torch.float32)[:, None, None]
        std = torch.tensor(self.image_std, dtype=torch.float32)[:, None, None]
        return planes.to(torch.float32).div_(255).sub_(mean).div_(std)
