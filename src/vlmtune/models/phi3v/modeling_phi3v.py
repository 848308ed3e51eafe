"""Phi-3-Vision model on transformers' own towers: ``Phi3Model`` + ``CLIPVisionModel`` + HD embedding.

Follows Microsoft's official Phi-3-V remote code (``modeling_phi3_v.py`` and
``image_embedding_phi3_v.py``):

- the CLIP tower gives hidden state ``layer_idx`` (-2) of every crop, CLS dropped; the layers after
  it are not computed (the last CLIP layer and ``post_layernorm`` stay loaded and saved, unused:
  DDP therefore needs ``find_unused_parameters=True`` or those parameters frozen);
- each crop's P x P patch features are merged 2x2 into (P/2) x (P/2) tokens of 4C dims; the
  sub-crops are laid out on their grid with the learned ``sub_GN`` after each token row, then the
  learned ``glb_GN``, then the global view laid out the same way (also with ``sub_GN``), for
  ``hd_transform_order = "sub_glb"``; a 2-layer MLP (Linear, GELU, Linear) projects 4C -> hidden;
- image features replace the placeholder tokens (negative ids, ``-k`` for image k) in order.

Module tree and parameter names equal the official checkpoint keys
(``model.vision_embed_tokens.img_processor.vision_model.*``, ``...img_projection.{0,2}.*``,
``...glb_GN``, ``...sub_GN``, ``model.layers.*``, ``lm_head.weight``), so ``state_dict()`` *is* the
official layout minus the duplicated ``wte`` entry. Loading and saving go through the key table in
``convert_phi3v_weights``, strictly.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionModel, GenerationMixin, Phi3Model
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.phi3.modeling_phi3 import Phi3PreTrainedModel

from vlmtune.models.phi3v.configuration_phi3v import Phi3VConfig
from vlmtune.models.phi3v.convert_phi3v_weights import (
    load_official_state_dict,
    official_to_native,
    save_official_checkpoint,
)

__all__ = [
    "LORA_TARGET_MODULES",
    "Phi3VCLIPHolder",
    "Phi3VForCausalLM",
    "Phi3VImageEmbedding",
    "Phi3VModel",
    "lora_target_modules",
]

_TEXT_LORA = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
_VISION_LORA = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
_PROJECTOR_LORA = ["img_projection.0", "img_projection.2"]
#: peft ``target_modules`` covering the decoder, the CLIP tower and the projector.
LORA_TARGET_MODULES = _TEXT_LORA + _VISION_LORA + _PROJECTOR_LORA


def lora_target_modules(vision: bool = True, projector: bool = True) -> list[str]:
    """peft ``target_modules`` names: the decoder linears, plus CLIP's and the projector's."""
    return _TEXT_LORA + (_VISION_LORA if vision else []) + (_PROJECTOR_LORA if projector else [])


class Phi3VCLIPHolder(nn.Module):
    """Holds the ``CLIPVisionModel`` as ``vision_model`` so parameter names read
    ``img_processor.vision_model.*`` as in the official checkpoints (transformers 5's
    ``CLIPVisionModel`` no longer has that level itself)."""

    def __init__(self, config: Phi3VConfig) -> None:
        super().__init__()
        vision_config = config.vision_config
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


class Phi3VModel(Phi3Model):
    """transformers' ``Phi3Model`` with the official ``vision_embed_tokens`` beside it."""

    config_class = Phi3VConfig

    def __init__(self, config: Phi3VConfig) -> None:
        super().__init__(config)
        self.vision_embed_tokens = Phi3VImageEmbedding(config)


class Phi3VForCausalLM(Phi3PreTrainedModel, GenerationMixin):
    """Phi-3-V for causal LM: ``model`` (``Phi3VModel``) + ``lm_head``.

    ``forward(input_ids [B, T], attention_mask [B, T], pixel_values [N, crops+1, 3, S, S],
    image_sizes [N, 2], labels [B, T])`` -> ``CausalLMOutputWithPast`` (logits [B, T, V]; loss
    with the internal shift, ignore index -100).
    """

    config_class = Phi3VConfig
    base_model_prefix = "model"
    _no_split_modules = ["Phi3DecoderLayer", "CLIPEncoderLayer"]

    def __init__(self, config: Phi3VConfig) -> None:
        super().__init__(config)
        self.model = Phi3VModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    # ------------------------------------------------------------------ components
    @property
    def vision_tower(self) -> CLIPVisionModel:
        """The ``CLIPVisionModel``."""
        return self.model.vision_embed_tokens.vision_tower

    @property
    def image_embedding(self) -> Phi3VImageEmbedding:
        """The HD embedding (CLIP tower, ``glb_GN``/``sub_GN``, projector)."""
        return self.model.vision_embed_tokens

    @property
    def language_model(self) -> Phi3VModel:
        return self.model

    @staticmethod
    def component_of(param_name: str) -> str:
        """``"vision_tower"``, ``"projector"`` or ``"language_model"`` for a parameter name
        (also with peft prefixes such as ``base_model.model.``)."""
        if "vision_embed_tokens.img_processor." in param_name:
            return "vision_tower"
        if "vision_embed_tokens." in param_name:
            return "projector"
        return "language_model"

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, Phi3VImageEmbedding):
            nn.init.normal_(module.glb_GN, std=self.config.initializer_range)
            nn.init.normal_(module.sub_GN, std=self.config.initializer_range)
            return
        if isinstance(module, CLIPVisionModel):
            return  # initialised by its own post_init
        super()._init_weights(module)

    # ------------------------------------------------------------------ embedding
    def embed_inputs(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings with image features at the placeholders: [B, T] -> [B, T, H].

        Placeholders are the negative ids (``-k`` for image k); they never index the embedding
        table and the caller's ``input_ids`` are not modified. Raises ``ValueError`` with both
        numbers when the placeholder count differs from the image-feature count, and for ids
        beyond the vocabulary.
        """
        if input_ids.numel() and int(input_ids.max()) >= self.config.vocab_size:
            raise ValueError(
                f"input_ids hold id {int(input_ids.max())} >= vocab_size {self.config.vocab_size}"
            )
        placeholders = input_ids < 0
        token_ids = input_ids.masked_fill(placeholders, 0)
        embeds = self.model.embed_tokens(token_ids)
        count = int(placeholders.sum())
        if pixel_values is None:
            if count:
                raise ValueError(
                    f"input_ids hold {count} image placeholder tokens but no pixel_values were given"
                )
            return embeds
        if image_sizes is None:
            raise ValueError("pixel_values given without image_sizes")
        per_image = self.image_embedding(pixel_values, image_sizes)
        features = torch.cat(per_image)
        if features.shape[0] != count:
            raise ValueError(
                f"input_ids hold {count} image placeholder tokens but the images give "
                f"{features.shape[0]} feature tokens"
            )
        _check_placeholder_runs(input_ids, [f.shape[0] for f in per_image])
        mask = placeholders.unsqueeze(-1).expand_as(embeds)
        return embeds.masked_scatter(mask, features.to(embeds.dtype))

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        cache: Any = None,
        use_cache: bool | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Logits [B, T, V] (loss when ``labels`` [B, T] are given).

        ``cache``: the KV cache (``past_key_values``, its name before transformers 5.2x, is
        accepted too).
        """
        legacy = kwargs.pop("past_key_values", None)  # the name before transformers 5.2x
        cache = cache if cache is not None else legacy
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_inputs(input_ids, pixel_values, image_sizes)
        if position_ids is None and attention_mask is not None and attention_mask.ndim == 2:
            position_ids = _positions_from_mask(attention_mask, inputs_embeds.shape[1])
        outputs = self.model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            **{_cache_argument(): cache},
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        elif not isinstance(logits_to_keep, int):
            hidden = hidden[:, logits_to_keep]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs
            )
        name = _cache_output_field()
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            **{name: getattr(outputs, name, None)},
        )

    def prepare_inputs_for_generation(self, input_ids, cache=None, **kwargs):
        """Images only on the prefill step; like transformers' Phi3, drop a cache built with the
        short RoPE factors when the sequence first crosses ``original_max_position_embeddings``."""
        legacy = kwargs.pop("past_key_values", None)  # the name before transformers 5.2x
        cache = cache if cache is not None else legacy
        limit = getattr(self.config, "original_max_position_embeddings", None)
        crossing = limit and input_ids.shape[1] >= limit + 1
        if cache is not None and crossing and cache.get_seq_length() <= limit:
            cache = None
            kwargs["next_sequence_length"] = None
        name = _cache_argument()
        inputs = super().prepare_inputs_for_generation(input_ids, **{name: cache}, **kwargs)
        cache = inputs.get(name)
        if cache is not None and cache.get_seq_length() > 0:
            inputs["pixel_values"] = None
            inputs["image_sizes"] = None
        return inputs

    # ------------------------------------------------------------------ weights I/O
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike[str],
        *,
        torch_dtype: torch.dtype | str | None = None,
        dtype: torch.dtype | str | None = None,
        attn_implementation: str | None = None,
        device_map: str | torch.device | None = None,
        config: Phi3VConfig | None = None,
        **kwargs: Any,
    ) -> Phi3VForCausalLM:
        """Load an official Phi-3-V checkpoint folder (single or sharded safetensors, bf16/fp32,
        with or without the ``wte`` duplicate) strictly through the key table.

        ``torch_dtype``/``dtype``: target dtype (``"auto"`` = the checkpoint's; default float32).
        ``attn_implementation``: ``"sdpa"`` (default) or ``"eager"``. Local folders only.
        """
        for flag in ("trust_remote_code", "low_cpu_mem_usage", "use_safetensors"):
            kwargs.pop(flag, None)
        if kwargs:
            raise TypeError(
                f"Phi3VForCausalLM.from_pretrained got unsupported arguments: {sorted(kwargs)}"
            )
        folder = Path(pretrained_model_name_or_path)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{folder} is not a checkpoint folder (only local folders are supported)"
            )
        config = config or Phi3VConfig.from_pretrained(folder)
        target = _resolve_dtype(dtype if dtype is not None else torch_dtype, config)
        config._attn_implementation = attn_implementation or "sdpa"
        state = official_to_native(load_official_state_dict(folder), config)
        model = _build_empty(cls, config)
        state = {k: v.to(target) if v.is_floating_point() else v for k, v in state.items()}
        model.load_state_dict(state, strict=True, assign=True)
        config.dtype = target
        _load_generation_config(model, folder)
        if device_map == "auto":
            device_map = "cuda" if torch.cuda.is_available() else "cpu"
        if isinstance(device_map, dict):
            raise ValueError("device_map dicts are not supported; give one device")
        if device_map is not None:
            model.to(device_map)
        return model.eval()

    def save_pretrained(
        self,
        save_directory: str | os.PathLike[str],
        *,
        state_dict: dict[str, torch.Tensor] | None = None,
        max_shard_size: int | str = "5GB",
        safe_serialization: bool = True,
        is_main_process: bool = True,
        **kwargs: Any,
    ) -> None:
        """Write ``config.json`` (official layout), ``model.safetensors`` (sharded above
        ``max_shard_size``, official key names, no ``wte``) and ``generation_config.json``."""
        if not safe_serialization:
            raise ValueError(
                "vlmtune writes safetensors only (safe_serialization=False would pickle)"
            )
        for flag in ("push_to_hub", "save_peft_format"):
            if kwargs.pop(flag, False) and flag == "push_to_hub":
                raise ValueError("push_to_hub is not supported")
        kwargs.pop("token", None)
        if kwargs:
            raise TypeError(
                f"Phi3VForCausalLM.save_pretrained got unsupported arguments: {sorted(kwargs)}"
            )
        if not is_main_process:
            return
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        save_official_checkpoint(
            state_dict if state_dict is not None else self.state_dict(),
            self.config,
            folder,
            max_shard_size,
        )
        self.config.save_pretrained(folder)
        if self.generation_config is not None:
            self.generation_config.save_pretrained(folder)


def _positions_from_mask(attention_mask: torch.Tensor, length: int) -> torch.LongTensor:
    """Positions counted over real tokens (left padding gets the same positions as none):
    [B, T_total] -> [B, length] (the last ``length`` columns)."""
    positions = attention_mask.long().cumsum(-1) - 1
    positions = positions.clamp_min(0)
    return positions[:, -length:]


def _resolve_dtype(requested: torch.dtype | str | None, config: Phi3VConfig) -> torch.dtype:
    if requested is None:
        return torch.float32
    if requested == "auto":
        requested = config.dtype or torch.float32
    if isinstance(requested, str):
        value = getattr(torch, requested, None)
        if not isinstance(value, torch.dtype):
            raise ValueError(f"unknown dtype {requested!r}")
        return value
    return requested


def _build_empty(cls: type[Phi3VForCausalLM], config: Phi3VConfig) -> Phi3VForCausalLM:
    """The model with parameters on the meta device (buffers real), ready for ``assign=True``."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return cls(config)


def _load_generation_config(model: Phi3VForCausalLM, folder: Path) -> None:
    path = folder / "generation_config.json"
    if path.is_file():
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_dict(
            json.loads(path.read_text(encoding="utf-8"))
        )


@functools.cache
def _cache_argument() -> str:
    """The KV cache's argument name in this transformers: ``cache`` (5.2x on; the old name is
    deprecated there) or ``past_key_values`` (earlier 5.x)."""
    params = inspect.signature(Phi3Model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@functools.cache
def _cache_output_field() -> str:
    """The KV cache's field name in transformers' model outputs (renamed with the argument)."""
    return "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def _check_placeholder_runs(input_ids: torch.Tensor, feature_counts: list[int]) -> None:
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
