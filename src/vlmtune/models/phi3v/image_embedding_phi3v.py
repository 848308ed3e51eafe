"""Phi-3-V's HD image embedding: CLIP crop features -> 2x2 merge -> separators -> MLP projector.

Follows ``image_embedding_phi3_v.py`` of Microsoft's official Phi-3-V remote code:

- the CLIP tower (transformers' ``CLIPVisionModel``, reused, not copied) gives hidden state
  ``layer_idx`` (-2) of every crop, CLS dropped; the layers after it are not computed (the last
  CLIP layer and ``post_layernorm`` stay loaded and saved, unused: DDP therefore needs
  ``find_unused_parameters=True`` or those parameters frozen);
- each crop's P x P patch features are merged 2x2 into (P/2) x (P/2) tokens of 4C dims; the
  sub-crops are laid out on their grid with the learned ``sub_GN`` after each token row, then the
  learned ``glb_GN``, then the global view laid out the same way (also with ``sub_GN``), for
  ``hd_transform_order = "sub_glb"``;
- a 2-layer MLP (Linear, GELU, Linear) projects 4C -> the decoder's hidden size.

For an ``h x w`` crop grid an image gives ``(h*w + 1) * (P/2)^2 + 1 + (h + 1) * P/2`` tokens.
Submodule names are the official ones, so parameter names match the checkpoints.
:func:`check_placeholder_runs` checks the other side of that count: that the ids hold, per image,
a run of placeholders as long as its features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionModel

from vlmtune.models.phi3v.configuration_phi3v import Phi3VConfig

__all__ = ["Phi3VCLIPHolder", "Phi3VImageEmbedding", "check_placeholder_runs"]


class Phi3VCLIPHolder(nn.Module):
    """Holds the ``CLIPVisionModel`` as ``vision_model`` so parameter names read
    ``img_processor.vision_model.*`` as in the official checkpoints (transformers 5's
    ``CLIPVisionModel`` no longer has that level itself)."""

    def __init__(self, config: Phi3VConfig) -> None:
        super().__init__()
        vision_config = (
            config.vision_config
        )  # a new object on every access: ``config`` is not touched
        vision_config._attn_implementation = config._attn_implementation
        self.vision_model = CLIPVisionModel(vision_config)


class Phi3VImageEmbedding(nn.Module):
    """The HD image embedding: CLIP features -> merged 2x2 -> laid out with separators -> MLP.

    Submodules keep the official names: ``img_processor`` (holding the CLIP tower),
    ``img_projection`` (Sequential Linear, GELU, Linear), ``glb_GN`` [1, 1, 4C], ``sub_GN``
    [1, 1, 1, 4C].
    """

    def __init__(self, config: Phi3VConfig) -> None:
        super().__init__()
        dim = int(config.img_processor["image_dim_out"])
        self.img_processor = Phi3VCLIPHolder(config)
        self.glb_GN = nn.Parameter(torch.zeros(1, 1, 4 * dim))
        self.sub_GN = nn.Parameter(torch.zeros(1, 1, 1, 4 * dim))
        self.img_projection = nn.Sequential(
            nn.Linear(4 * dim, config.hidden_size),
            nn.GELU(),
            nn.Linear(config.hidden_size, config.hidden_size),
        )
        self.image_dim_out = dim
        self.crop_size = config.crop_size
        self.grid = config.patch_grid
        self.layers_used = config.num_vision_layers_used()
        self.order = config.hd_transform_order

    @property
    def vision_tower(self) -> CLIPVisionModel:
        return self.img_processor.vision_model

    def crop_features(self, crops: torch.Tensor) -> torch.Tensor:
        """CLIP hidden state ``layer_idx`` without CLS: [N, 3, S, S] -> [N, P*P, C]."""
        tower = self.vision_tower
        hidden = tower.embeddings(crops.to(tower.embeddings.patch_embedding.weight.dtype))
        hidden = tower.pre_layrnorm(hidden)
        layers = tower.encoder.layers[: self.layers_used]
        if self._needs_input_grad(hidden, layers):
            hidden = hidden.requires_grad_(True)
        for layer in layers:
            hidden = layer(hidden, None)
        return hidden[:, 1:]

    def _needs_input_grad(self, hidden: torch.Tensor, layers: nn.ModuleList) -> bool:
        """Reentrant activation checkpointing only back-propagates into a checkpointed block whose
        input requires grad: true when the patch embedding is frozen but tower layers (e.g. LoRA)
        train."""
        if not (self.training and torch.is_grad_enabled()) or hidden.requires_grad:
            return False
        return any(p.requires_grad for p in layers.parameters())

    def forward(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor) -> list[torch.Tensor]:
        """Projected features per image.

        pixel_values: [num_images, max_crops + 1, 3, S, S]; image_sizes: [num_images, 2]
        (height, width, multiples of S). Returns one [tokens_i, hidden] tensor per image.
        """
        grids = self._grids(pixel_values, image_sizes)
        used = [pixel_values[i, : 1 + h * w] for i, (h, w) in enumerate(grids)]
        feats = self.crop_features(torch.cat(used))
        merged = self._merge_2x2(feats)
        layouts, start = [], 0
        for h, w in grids:
            layouts.append(self._layout(merged[start : start + 1 + h * w], h, w))
            start += 1 + h * w
        lengths = [t.shape[0] for t in layouts]
        projector_dtype = self.img_projection[0].weight.dtype
        projected = self.img_projection(torch.cat(layouts).to(projector_dtype))
        return list(projected.split(lengths))

    def _grids(
        self, pixel_values: torch.Tensor, image_sizes: torch.Tensor
    ) -> list[tuple[int, int]]:
        if pixel_values.ndim != 5:
            raise ValueError(
                f"pixel_values must be [num_images, crops, 3, S, S], got {tuple(pixel_values.shape)}"
            )
        if tuple(pixel_values.shape[-3:]) != (3, self.crop_size, self.crop_size):
            raise ValueError(
                f"pixel_values crops are {tuple(pixel_values.shape[-3:])}, the model expects "
                f"(3, {self.crop_size}, {self.crop_size}); check the image processor's crop_size"
            )
        sizes = torch.as_tensor(image_sizes).view(-1, 2).tolist()
        if len(sizes) != pixel_values.shape[0]:
            raise ValueError(
                f"{len(sizes)} image_sizes for {pixel_values.shape[0]} images in pixel_values"
            )
        grids = []
        for h, w in sizes:
            rows, cols = int(h) // self.crop_size, int(w) // self.crop_size
            if rows < 1 or cols < 1 or 1 + rows * cols > pixel_values.shape[1]:
                raise ValueError(
                    f"image size {h}x{w} needs {1 + rows * cols} crops of {self.crop_size}, "
                    f"pixel_values hold {pixel_values.shape[1]}"
                )
            grids.append((rows, cols))
        return grids

    def _merge_2x2(self, feats: torch.Tensor) -> torch.Tensor:
        """[N, P*P, C] -> [N, P/2, P/2, 4C] (each token: its 2x2 patches, row-major)."""
        n, p, c = feats.shape[0], self.grid, feats.shape[-1]
        half = p // 2
        return (
            feats.reshape(n, half, 2, half, 2, c)
            .permute(0, 1, 3, 2, 4, 5)
            .reshape(n, half, half, 4 * c)
        )

    def _layout(self, merged: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        """Global + sub crops of one image [1 + rows*cols, P/2, P/2, 4C] -> [tokens, 4C]."""
        half, dim = merged.shape[1], merged.shape[-1]
        sub = merged[1:].reshape(rows, cols, half, half, dim).permute(0, 2, 1, 3, 4)
        sub = self._with_newlines(sub.reshape(rows * half, cols * half, dim))
        glb = self._with_newlines(merged[0])
        separator = self.glb_GN.reshape(1, dim).to(merged.dtype)
        parts = [sub, separator, glb] if self.order == "sub_glb" else [glb, separator, sub]
        return torch.cat(parts)

    def _with_newlines(self, grid: torch.Tensor) -> torch.Tensor:
        """[R, W, 4C] -> [R * (W + 1), 4C] with ``sub_GN`` closing every row."""
        newline = (
            self.sub_GN.reshape(1, 1, -1).to(grid.dtype).expand(grid.shape[0], 1, grid.shape[-1])
        )
        return torch.cat([grid, newline], dim=1).reshape(-1, grid.shape[-1])


def check_placeholder_runs(input_ids: torch.Tensor, feature_counts: list[int]) -> None:
    """Check that each sample's placeholders are runs of ``-1, -2, ...`` (one run per image, in
    order) and that each run is as long as its image's features; images are taken in order
    across the batch. Raises ``ValueError`` naming the sample, the image and both numbers.

    The runs of the whole batch are found with tensor ops and read back in one transfer
    (sample, image number, length per run), so the check costs one host sync per forward.
    """
    width = input_ids.shape[1] + 1
    flat = F.pad(input_ids, (0, 1)).flatten()  # a 0 after each row ends its last run there
    where = torch.nonzero(flat < 0).flatten()
    values = flat[where]
    new_run = torch.ones_like(where, dtype=torch.bool)
    new_run[1:] = (where[1:] != where[:-1] + 1) | (values[1:] != values[:-1])
    starts = torch.nonzero(new_run).flatten()
    lengths = torch.diff(starts, append=starts.new_tensor([where.numel()]))
    runs = torch.stack([where[starts] // width, -values[starts], lengths], dim=1).tolist()
    previous = (-1, 0)  # (sample, image number) of the run before
    for image, (sample, found, length) in enumerate(runs):
        k = previous[1] + 1 if sample == previous[0] else 1
        previous = (sample, k)
        if found != k:
            raise ValueError(
                f"sample {sample}: placeholder run {k} holds id {-found}, expected {-k} "
                f"(<|image_{k}|>)"
            )
        expected = feature_counts[image] if image < len(feature_counts) else 0
        if length != expected:
            raise ValueError(
                f"sample {sample}: image {k} has {length} placeholder tokens but its "
                f"features are {expected} tokens"
            )
