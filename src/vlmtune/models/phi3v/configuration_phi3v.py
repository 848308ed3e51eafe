"""Phi-3-Vision configuration: a transformers ``Phi3Config`` plus the image settings.

Follows Microsoft's official Phi-3-V remote code (``configuration_phi3_v.py`` and the CLIP
settings hard-coded in ``image_embedding_phi3_v.py``). The official ``config.json`` is a flat
Phi-3 decoder config with two extra dicts:

- ``embd_layer``: the HD image embedding (``use_hd_transform``, ``with_learnable_separator``,
  ``hd_transform_order`` = ``"sub_glb"``, ``projection_cls`` = ``"mlp"``);
- ``img_processor``: the CLIP tower (``model_name``, ``image_dim_out``, ``num_img_tokens``,
  optional ``layer_idx`` (-2) / ``type_feature`` (``"patch"``)).

The official code hard-codes CLIP ViT-L/14-336. vlmtune uses those values when
``img_processor.model_name`` names that model and lets an explicit ``img_processor.vision_config``
dict override them, so tiny test models share the code path. ``rope_scaling`` of type ``"su"`` is
transformers' ``"longrope"``; both that and the transformers-5 form (``rope_type`` inside) are read,
and the official three-field form is written back. In memory the LongRoPE ``factor`` is set to
``max_position_embeddings / original_max_position_embeddings``, the value transformers would derive
itself (and warn about on every load when it is missing).

``save_pretrained`` writes ``config.json`` as the hub's checkpoints have it: the official keys (plus
any other field that differs from its default), ``architectures``, ``torch_dtype`` of the saved
weights, ``use_cache: true`` (training turns the cache off in memory; a saved model is for
inference), and ``auto_map`` only for the remote-code files the folder holds.
"""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path
from typing import Any

import torch
from huggingface_hub.dataclasses import strict
from transformers import CLIPVisionConfig, Phi3Config

from vlmtune.utils.devices import dtype_name, torch_dtype
from vlmtune.utils.io import atomic_write_json

__all__ = [
    "ARCHITECTURE",
    "CLIP_VIT_L14_336",
    "OFFICIAL_AUTO_MAP",
    "OFFICIAL_CLIP_NAME",
    "Phi3VConfig",
]

#: The model class named in ``config.json``'s ``architectures`` (what vLLM dispatches on).
ARCHITECTURE = "Phi3VForCausalLM"

OFFICIAL_CLIP_NAME = "openai/clip-vit-large-patch14-336"

#: The CLIP ViT-L/14-336 settings the official Phi-3-V code hard-codes.
CLIP_VIT_L14_336: dict[str, Any] = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
    "num_channels": 3,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 768,
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
}

_DEFAULT_EMBD_LAYER: dict[str, Any] = {
    "embedding_cls": "image",
    "hd_transform_order": "sub_glb",
    "projection_cls": "mlp",
    "use_hd_transform": True,
    "with_learnable_separator": True,
}

_DEFAULT_IMG_PROCESSOR: dict[str, Any] = {
    "image_dim_out": 1024,
    "model_name": OFFICIAL_CLIP_NAME,
    "name": "clip_vision_model",
    "num_img_tokens": 144,
}

#: ``config.json``'s ``auto_map`` on the hub: classes in the remote-code files of the checkpoint.
OFFICIAL_AUTO_MAP = {
    "AutoConfig": "configuration_phi3_v.Phi3VConfig",
    "AutoModelForCausalLM": "modeling_phi3_v.Phi3VForCausalLM",
}

#: The keys of the hub's ``config.json`` and ``pad_token_id`` (the golden checkpoint's has it too);
#: other fields are written only when they differ from their default (as transformers 4 did).
_HUB_KEYS = frozenset(
    {
        "_name_or_path", "architectures", "attention_dropout", "auto_map", "bos_token_id",
        "embd_layer", "eos_token_id", "hidden_act", "hidden_size", "img_processor",
        "initializer_range", "intermediate_size", "max_position_embeddings", "model_type",
        "num_attention_heads", "num_hidden_layers", "num_key_value_heads",
        "original_max_position_embeddings", "pad_token_id", "rms_norm_eps", "rope_scaling", "rope_theta",
        "sliding_window", "tie_word_embeddings", "torch_dtype", "transformers_version",
        "use_cache", "vocab_size",
    }
)  # fmt: skip


def _normalise_rope(rope: Any) -> Any:
    """Map the official ``{"type": "su", ...}`` (or ``rope_type`` "su") onto transformers' longrope."""
    if not isinstance(rope, dict):
        return rope
    rope = dict(rope)
    rope_type = rope.pop("type", None) or rope.get("rope_type")
    if rope_type in ("su", "longrope"):
        rope["rope_type"] = "longrope"
    elif rope_type is not None:
        rope["rope_type"] = rope_type
    return rope


@strict
class Phi3VConfig(Phi3Config):
    """Configuration of Phi-3-V / Phi-3.5-V: the Phi-3 decoder fields plus ``embd_layer`` and
    ``img_processor`` as in the official ``config.json``.

    ``vision_config`` (a ``CLIPVisionConfig``), ``crop_size``, ``patch_grid``, ``layer_idx`` and
    ``tokens_per_crop`` are derived from ``img_processor``; ``text_config`` is the Phi-3 part as a
    plain ``Phi3Config``.
    """

    model_type = "phi3_v"

    embd_layer: dict | None = None
    img_processor: dict | None = None

    def __post_init__(self, **kwargs):
        self.embd_layer = {**_DEFAULT_EMBD_LAYER, **(self.embd_layer or {})}
        self.img_processor = {**_DEFAULT_IMG_PROCESSOR, **(self.img_processor or {})}
        if "vision_config" in self.img_processor and isinstance(
            self.img_processor["vision_config"], CLIPVisionConfig
        ):
            self.img_processor["vision_config"] = self.img_processor["vision_config"].to_dict()
        if (
            "dtype" in kwargs
        ):  # our saved config.json carries both names (torch_dtype for 4.x readers)
            kwargs.pop("torch_dtype", None)
        super().__post_init__(**kwargs)
        self.validate_phi3v()

    def convert_rope_params_to_dict(self, default_theta=10_000.0, ignore_keys=None, **kwargs):
        """Accept ``rope_scaling`` in the official (``type: su``) or transformers-5 form."""
        rope = kwargs.get("rope_scaling") or self.rope_parameters
        if isinstance(rope, dict):
            kwargs["rope_scaling"] = _normalise_rope(rope)
            self.rope_parameters = None
        kwargs = super().convert_rope_params_to_dict(default_theta, ignore_keys, **kwargs)
        rope = self.rope_parameters
        if rope.get("rope_type") == "longrope" and rope.get("factor") is None:
            original = rope.get("original_max_position_embeddings") or self.max_position_embeddings
            rope["factor"] = self.max_position_embeddings / original
        return kwargs

    # ------------------------------------------------------------------ derived settings
    @property
    def vision_config(self) -> CLIPVisionConfig:
        """The CLIP tower config: ViT-L/14-336 for the official name, overridden by
        ``img_processor.vision_config``. A new object on every access."""
        return CLIPVisionConfig(**self._vision_config_dict())

    @property
    def text_config(self) -> Phi3Config:
        """The Phi-3 decoder part as a plain ``Phi3Config`` (a copy)."""
        data = {k: v for k, v in self.to_dict().items() if k not in ("embd_layer", "img_processor")}
        data.pop("model_type", None)
        data.pop("auto_map", None)
        data.pop("architectures", None)
        return Phi3Config(**data)

    def get_text_config(self, *args, **kwargs) -> Phi3VConfig:
        """transformers internals (generation, caches) use this flat config itself."""
        return self

    @property
    def crop_size(self) -> int:
        """Side S of one image crop in pixels (336 for the real model)."""
        return int(self._vision_config_dict()["image_size"])

    @property
    def patch_grid(self) -> int:
        """Patches per crop side (24 for the real model)."""
        vision = self._vision_config_dict()
        return int(vision["image_size"]) // int(vision["patch_size"])

    @property
    def tokens_per_crop(self) -> int:
        """Image tokens per crop after the 2x2 merge (144 for the real model)."""
        return (self.patch_grid // 2) ** 2

    @property
    def layer_idx(self) -> int:
        """Which CLIP hidden state feeds the projector (-2: the penultimate layer)."""
        return int(self.img_processor.get("layer_idx", -2))

    @property
    def hd_transform_order(self) -> str:
        return str(self.embd_layer.get("hd_transform_order", "glb_sub"))

    def num_vision_layers_used(self) -> int:
        """How many CLIP encoder layers are computed to reach hidden state ``layer_idx``."""
        total = int(self._vision_config_dict()["num_hidden_layers"])
        idx = self.layer_idx
        return total + 1 + idx if idx < 0 else idx

    def _vision_config_dict(self) -> dict[str, Any]:
        proc = self.img_processor or {}
        explicit = proc.get("vision_config")
        if proc.get("model_name") != OFFICIAL_CLIP_NAME and not explicit:
            raise ValueError(
                f"img_processor.model_name={proc.get('model_name')!r} is not {OFFICIAL_CLIP_NAME!r} "
                "and no img_processor.vision_config dict gives the CLIP geometry"
            )
        base = dict(CLIP_VIT_L14_336) if proc.get("model_name") == OFFICIAL_CLIP_NAME else {}
        base.update(copy.deepcopy(explicit or {}))
        return base

    # ------------------------------------------------------------------ validation
    def validate_phi3v(self) -> None:
        """Refuse settings the HD embedding cannot implement, with the offending values."""
        emb, proc = self.embd_layer, self.img_processor
        if proc.get("name", "clip_vision_model") != "clip_vision_model":
            raise ValueError(
                f"img_processor.name={proc.get('name')!r}: only 'clip_vision_model' is supported"
            )
        if not (emb.get("use_hd_transform") and emb.get("with_learnable_separator")):
            raise ValueError(
                "embd_layer must set use_hd_transform and with_learnable_separator to true "
                f"(got {emb.get('use_hd_transform')!r}, {emb.get('with_learnable_separator')!r})"
            )
        if emb.get("projection_cls", "mlp") != "mlp":
            raise ValueError(
                f"embd_layer.projection_cls={emb.get('projection_cls')!r}: only 'mlp' is supported"
            )
        if self.hd_transform_order not in ("sub_glb", "glb_sub"):
            raise ValueError(
                f"embd_layer.hd_transform_order={self.hd_transform_order!r}: use 'sub_glb' or 'glb_sub'"
            )
        if proc.get("type_feature", "patch") != "patch":
            raise ValueError(
                f"img_processor.type_feature={proc.get('type_feature')!r}: only 'patch' is supported"
            )
        self._validate_geometry()

    def _validate_geometry(self) -> None:
        vision = self._vision_config_dict()
        size, patch = int(vision["image_size"]), int(vision["patch_size"])
        if size % patch or (size // patch) % 2:
            raise ValueError(
                f"vision geometry image_size={size}, patch_size={patch} gives a patch grid of "
                f"{size / patch:g} per side; the HD embedding merges patches 2x2 and needs an even integer grid"
            )
        if int(self.img_processor["image_dim_out"]) != int(vision["hidden_size"]):
            raise ValueError(
                f"img_processor.image_dim_out={self.img_processor['image_dim_out']} differs from the "
                f"CLIP hidden_size={vision['hidden_size']}"
            )
        if int(self.img_processor["num_img_tokens"]) != self.tokens_per_crop:
            raise ValueError(
                f"img_processor.num_img_tokens={self.img_processor['num_img_tokens']} but the geometry "
                f"gives {self.tokens_per_crop} tokens per crop ((image_size/patch_size/2)^2)"
            )
        used = self.num_vision_layers_used()
        if not 1 <= used <= int(vision["num_hidden_layers"]):
            raise ValueError(
                f"img_processor.layer_idx={self.layer_idx} is outside the "
                f"{vision['num_hidden_layers']} CLIP layers"
            )

    # ------------------------------------------------------------------ serialisation
    def save_pretrained(
        self,
        save_directory: str | os.PathLike[str],
        push_to_hub: bool = False,
        *,
        dtype: torch.dtype | str | None = None,
        **kwargs: Any,
    ) -> None:
        """Write ``config.json`` into ``save_directory`` (atomically) as :meth:`to_official_dict`
        gives it for that folder; ``dtype`` is the saved weights' (default: the config's)."""
        if push_to_hub or kwargs:
            raise TypeError(f"Phi3VConfig.save_pretrained: unsupported arguments {sorted(kwargs)}")
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / "config.json", self.to_official_dict(folder, dtype=dtype))

    def to_diff_dict(self) -> dict[str, Any]:
        """The config in the official layout (without a folder: no ``auto_map``)."""
        return self.to_official_dict()

    def to_official_dict(
        self, folder: str | os.PathLike[str] | None = None, dtype: torch.dtype | str | None = None
    ) -> dict[str, Any]:
        """Official ``config.json`` content: the hub's keys, other fields only when not at their
        default, ``rope_scaling = {type: su, short_factor, long_factor}``, ``torch_dtype``, and
        ``auto_map`` entries whose remote-code module is a file in ``folder``."""
        data = self.to_dict()
        defaults = _default_dict()
        official = {
            key: value
            for key, value in data.items()
            if key in _HUB_KEYS
            or (key not in _NOT_WRITTEN and (key not in defaults or value != defaults[key]))
        }
        official["rope_theta"], official["rope_scaling"] = _official_rope(data)
        official["architectures"] = [ARCHITECTURE]
        official["model_type"] = self.model_type
        official["use_cache"] = True
        dtype = dtype or data.get("dtype") or "float32"
        official["torch_dtype"] = dtype_name(
            dtype if isinstance(dtype, torch.dtype) else torch_dtype(dtype)
        )
        official.pop("auto_map", None)
        auto_map = _present_auto_map(getattr(self, "auto_map", None) or OFFICIAL_AUTO_MAP, folder)
        if auto_map:
            official["auto_map"] = auto_map
        return dict(sorted(official.items()))


#: Fields never written: transformers-5 names of written ones, runtime choices, LongRoPE's derived
#: factor (inside ``rope_parameters``, written as the official ``rope_scaling``).
_NOT_WRITTEN = frozenset(
    {"dtype", "rope_parameters", "_attn_implementation", "_experts_implementation"}
)


@functools.cache
def _default_dict() -> dict[str, Any]:
    """Every field at its default (the reference for what differs)."""
    return Phi3VConfig().to_dict()


def _official_rope(data: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(``rope_theta``, ``rope_scaling``) in the official form from transformers' ``rope_parameters``."""
    rope = data.get("rope_parameters") or {}
    theta = rope.get("rope_theta", 10_000.0)
    if rope.get("rope_type") == "longrope":
        return theta, {
            "type": "su",
            "short_factor": list(rope["short_factor"]),
            "long_factor": list(rope["long_factor"]),
        }
    if rope.get("rope_type", "default") == "default":
        return theta, None
    raise ValueError(f"rope type {rope.get('rope_type')!r} has no official Phi-3-V form")


def _present_auto_map(
    auto_map: dict[str, str], folder: str | os.PathLike[str] | None
) -> dict[str, str]:
    """The entries of ``auto_map`` whose module (``module.Class``) is a ``.py`` file in ``folder``;
    references into another repository (``repo--module.Class``) are kept as they are."""
    if folder is None:
        return {}
    kept = {}
    for auto_class, reference in auto_map.items():
        module = str(reference).split(".")[0]
        if "--" in module or (Path(folder) / f"{module}.py").is_file():
            kept[auto_class] = reference
    return kept
