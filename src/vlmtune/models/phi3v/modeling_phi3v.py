"""Phi-3-Vision model on transformers' own towers: ``Phi3Model`` + ``CLIPVisionModel`` + HD embedding.

Follows Microsoft's official Phi-3-V remote code (``modeling_phi3_v.py``) and reads like
transformers' llava (``modeling_llava.py``):

- ``Phi3VModel`` is the base model: the Phi-3 decoder and the HD image embedding
  (:mod:`~vlmtune.models.phi3v.image_embedding_phi3v`). It merges the image features into the token
  embeddings (placeholders are negative ids, ``-k`` for image k, replaced in order) and runs the
  decoder; ``language_model`` is the decoder alone.
- ``Phi3VForCausalLM`` is ``model`` (``Phi3VModel``) + ``lm_head``: logits, loss, generation and
  the checkpoint I/O.

Parameter names are the official checkpoint keys (``model.embed_tokens``, ``model.layers.*``,
``model.norm``, ``model.vision_embed_tokens.*``, ``lm_head.weight``): ``state_dict()`` *is* the
official layout minus the duplicated ``wte``; loads and saves go through the key table in
``convert_phi3v_weights``, strictly. A model owns a copy of the config it is given (transformers
writes attention settings into a model's config; a caller's stays as it was).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import CLIPVisionModel, GenerationConfig, GenerationMixin, Phi3Model
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.models.phi3.modeling_phi3 import Phi3PreTrainedModel

from vlmtune.models.phi3v.configuration_phi3v import Phi3VConfig
from vlmtune.models.phi3v.convert_phi3v_weights import (
    load_official_state_dict,
    official_to_native,
    save_official_checkpoint,
)
from vlmtune.models.phi3v.hub_files import load_generation_config, save_generation_config
from vlmtune.models.phi3v.image_embedding_phi3v import Phi3VImageEmbedding, check_placeholder_runs
from vlmtune.models.phi3v.sequence_phi3v import (
    cache_argument,
    cache_output_field,
    is_packed,
    positions_from_mask,
)
from vlmtune.utils.devices import torch_dtype

__all__ = ["LORA_TARGET_MODULES", "Phi3VForCausalLM", "Phi3VModel", "lora_target_modules"]

_TEXT_LORA = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
_VISION_LORA = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
_PROJECTOR_LORA = ["img_projection.0", "img_projection.2"]
#: peft ``target_modules`` covering the decoder, the CLIP tower and the projector.
LORA_TARGET_MODULES = _TEXT_LORA + _VISION_LORA + _PROJECTOR_LORA
_DECODER_PARTS = ("embed_tokens", "layers", "norm", "rotary_emb")


def lora_target_modules(vision: bool = True, projector: bool = True) -> list[str]:
    """peft ``target_modules`` names: the decoder linears, plus CLIP's and the projector's."""
    return _TEXT_LORA + (_VISION_LORA if vision else []) + (_PROJECTOR_LORA if projector else [])


class Phi3VModel(Phi3PreTrainedModel):
    """The base model: the Phi-3 decoder (``embed_tokens``, ``layers``, ``norm``) and the HD image
    embedding (``vision_embed_tokens``); images are merged into the token embeddings here.

    ``forward(input_ids [B, T], attention_mask [B, T], pixel_values [N, crops+1, 3, S, S],
    image_sizes [N, 2])`` -> ``BaseModelOutputWithPast`` (last_hidden_state [B, T, H]).
    """

    config_class = Phi3VConfig

    def __init__(self, config: Phi3VConfig) -> None:
        super().__init__(config)
        decoder = Phi3Model(config)
        # The official keys put the decoder's parts directly under ``model.``, beside
        # ``vision_embed_tokens``: they are registered here, and the decoder object (not a
        # registered child, so no parameter is listed twice) runs over these same modules.
        for name in _DECODER_PARTS:
            setattr(self, name, getattr(decoder, name))
        object.__setattr__(self, "_decoder", decoder)
        self.vision_embed_tokens = Phi3VImageEmbedding(config)
        self.post_init()

    @property
    def language_model(self) -> Phi3Model:
        """The Phi-3 decoder alone (transformers' ``Phi3Model``), over this model's own modules."""
        decoder = self._decoder
        for name in _DECODER_PARTS:  # follow a part replaced since (e.g. set_input_embeddings)
            decoder._modules[name] = self._modules[name]
        decoder.training = self.training
        return decoder

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def _init_weights(self, module: nn.Module) -> None:
        _init_phi3v_weights(self, module, super()._init_weights)

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
        embeds = self.embed_tokens(input_ids.masked_fill(placeholders, 0))
        count = int(placeholders.sum())
        if pixel_values is None:
            if count:
                raise ValueError(
                    f"input_ids hold {count} image placeholder tokens but no pixel_values were given"
                )
            return embeds
        if image_sizes is None:
            raise ValueError("pixel_values given without image_sizes")
        per_image = self.vision_embed_tokens(pixel_values, image_sizes)
        features = torch.cat(per_image)
        if features.shape[0] != count:
            raise ValueError(
                f"input_ids hold {count} image placeholder tokens but the images give "
                f"{features.shape[0]} feature tokens"
            )
        check_placeholder_runs(input_ids, [f.shape[0] for f in per_image])
        mask = placeholders.unsqueeze(-1).expand_as(embeds)
        return embeds.masked_scatter(mask, features.to(embeds.dtype))

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        """Hidden states [B, T, H] of ``input_ids`` with the images merged in (or of
        ``inputs_embeds``, e.g. from :meth:`embed_inputs`). ``cache``: the KV cache
        (``past_key_values``, its name before transformers 5.2x, is accepted too)."""
        legacy = kwargs.pop("past_key_values", None)
        cache = cache if cache is not None else legacy
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_inputs(input_ids, pixel_values, image_sizes)
        elif pixel_values is not None:
            raise ValueError(
                "pixel_values given with inputs_embeds would be ignored: pass input_ids, or "
                "inputs_embeds from embed_inputs(input_ids, pixel_values, image_sizes) alone"
            )
        if position_ids is None and attention_mask is not None and attention_mask.ndim == 2:
            position_ids = positions_from_mask(attention_mask, inputs_embeds.shape[1])
        if is_packed(position_ids, attention_mask, cache):
            # transformers reads restarting positions as sample boundaries only without a
            # cache: a packed row never builds one, whatever config.use_cache says
            use_cache = False
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            **{cache_argument(): cache},
            **kwargs,
        )


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
        super().__init__(copy.deepcopy(config))
        self.model = Phi3VModel(self.config)
        self.vocab_size = self.config.vocab_size
        self.lm_head = nn.Linear(self.config.hidden_size, self.config.vocab_size, bias=False)
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
    def language_model(self) -> Phi3Model:
        """The Phi-3 decoder alone (no image embedding, no ``lm_head``)."""
        return self.model.language_model

    @property
    def is_gradient_checkpointing(self) -> bool:
        """The name peft still reads (transformers 5.2x deprecated it): answered without the
        warning, and still answered once transformers removes its alias."""
        return self.is_activation_checkpointing

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
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def _init_weights(self, module: nn.Module) -> None:
        _init_phi3v_weights(self, module, super()._init_weights)

    def embed_inputs(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings with the image features merged in (:meth:`Phi3VModel.embed_inputs`)."""
        return self.model.embed_inputs(input_ids, pixel_values, image_sizes)

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
        """Logits [B, T, V] (loss when ``labels`` [B, T] are given); arguments as for
        :meth:`Phi3VModel.forward`."""
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=pixel_values,
            image_sizes=image_sizes,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
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
        name = cache_output_field()
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
        name = cache_argument()
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
        ``attn_implementation``: ``"sdpa"`` (default), ``"eager"`` or ``"flash_attention_2"``.
        Local folders only; a ``config`` given is copied, never changed.
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
        config = (
            copy.deepcopy(config) if config is not None else Phi3VConfig.from_pretrained(folder)
        )
        target = _resolve_dtype(dtype if dtype is not None else torch_dtype, config)
        config._attn_implementation = attn_implementation or "sdpa"
        state = official_to_native(load_official_state_dict(folder), config)
        model = _build_empty(cls, config)
        state = {k: v.to(target) if v.is_floating_point() else v for k, v in state.items()}
        model.load_state_dict(state, strict=True, assign=True)
        model.config.dtype = target
        model.name_or_path = model.config.name_or_path = str(folder)  # as transformers records it
        model.generation_config = load_generation_config(folder) or model.generation_config
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
        generation_config: GenerationConfig | None = None,
        **kwargs: Any,
    ) -> None:
        """Write the folder the hub's checkpoints have: ``config.json`` (official layout, see
        ``Phi3VConfig.save_pretrained``), ``model.safetensors`` (sharded with an index above
        ``max_shard_size``, official key names, no ``wte``) and ``generation_config.json``
        (``generation_config``, default the model's)."""
        if not safe_serialization or kwargs.pop("push_to_hub", False):
            raise ValueError("vlmtune writes local safetensors only (no pickle, no push_to_hub)")
        for ignored in ("save_peft_format", "token"):
            kwargs.pop(ignored, None)
        if kwargs:
            raise TypeError(
                f"Phi3VForCausalLM.save_pretrained got unsupported arguments: {sorted(kwargs)}"
            )
        if not is_main_process:
            return
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        state = state_dict if state_dict is not None else self.state_dict()
        save_official_checkpoint(state, self.config, folder, max_shard_size)
        saved_dtype = state["model.embed_tokens.weight"].dtype
        self.config.save_pretrained(folder, dtype=saved_dtype)
        save_generation_config(generation_config or self.generation_config, folder)


def _init_phi3v_weights(model: nn.Module, module: nn.Module, default: Any) -> None:
    """Initialise ``module`` of ``model``: random separators, CLIP left to its own ``post_init``,
    everything else as transformers' Phi-3."""
    if isinstance(module, Phi3VImageEmbedding):
        nn.init.normal_(module.glb_GN, std=model.config.initializer_range)
        nn.init.normal_(module.sub_GN, std=model.config.initializer_range)
        return
    if isinstance(module, CLIPVisionModel):
        return
    default(module)


def _resolve_dtype(requested: torch.dtype | str | None, config: Phi3VConfig) -> torch.dtype:
    """The load dtype: float32 by default, the checkpoint's for ``"auto"``, else as named."""
    if requested is None:
        return torch.float32
    if requested == "auto":
        requested = config.dtype or torch.float32
    return requested if isinstance(requested, torch.dtype) else torch_dtype(requested)


def _build_empty(cls: type[Phi3VForCausalLM], config: Phi3VConfig) -> Phi3VForCausalLM:
    """The model with parameters on the meta device (buffers real), ready for ``assign=True``."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return cls(config)
