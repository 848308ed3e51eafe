"""What the memory planner needs to know about a model: its sizes and its parameter counts.

:class:`ModelShape` holds the sizes of Phi-3-V (the Phi-3 decoder, the CLIP tower as far as
``img_processor.layer_idx`` computes it, the HD projector) read from a :class:`Phi3VConfig`,
and counts the parameters of each part exactly as :class:`Phi3VForCausalLM` builds them
(checked against the model and against the hub's ``model.safetensors.index.json`` in the tests).
:func:`image_grid` and :func:`image_tokens` give the crop grid of a photo and its token count
with the image processor's own arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vlmtune.models.phi3v.configuration_phi3v import Phi3VConfig
from vlmtune.models.phi3v.image_processing_phi3v import hd_geometry

__all__ = ["LinearShape", "ModelShape", "image_grid", "image_tokens"]


@dataclass(frozen=True)
class LinearShape:
    """One Linear layer kind: ``count`` layers of ``d_in x d_out`` (``bias`` or not)."""

    name: str
    d_in: int
    d_out: int
    count: int
    bias: bool = False

    @property
    def params(self) -> int:
        return self.count * (self.d_in * self.d_out + (self.d_out if self.bias else 0))


@dataclass(frozen=True)
class ModelShape:
    """Sizes of a Phi-3-V model.

    Decoder: ``hidden`` H, ``intermediate`` I, ``layers`` L, ``heads`` / ``kv_heads`` (head
    dimension H / heads), ``vocab`` V. Vision (CLIP): ``v_hidden`` C, ``v_intermediate``,
    ``v_layers`` (loaded), ``v_layers_used`` (computed up to ``layer_idx``), ``v_heads``,
    ``crop`` S and ``patch`` p; ``crop_tokens`` = (S/p)^2 + 1 tokens per crop (577 for the real
    model) and ``tokens_per_crop`` = (S/2p)^2 image tokens per crop after the 2x2 merge (144).
    """

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied_embeddings: bool
    v_hidden: int
    v_intermediate: int
    v_layers: int
    v_layers_used: int
    v_heads: int
    crop: int
    patch: int

    @classmethod
    def from_config(cls, config: Phi3VConfig) -> ModelShape:
        vision = config.vision_config
        return cls(
            hidden=int(config.hidden_size),
            intermediate=int(config.intermediate_size),
            layers=int(config.num_hidden_layers),
            heads=int(config.num_attention_heads),
            kv_heads=int(config.num_key_value_heads or config.num_attention_heads),
            vocab=int(config.vocab_size),
            tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
            v_hidden=int(vision.hidden_size),
            v_intermediate=int(vision.intermediate_size),
            v_layers=int(vision.num_hidden_layers),
            v_layers_used=int(config.num_vision_layers_used()),
            v_heads=int(vision.num_attention_heads),
            crop=int(vision.image_size),
            patch=int(vision.patch_size),
        )

    # ---------------------------------------------------------------- derived sizes
    @property
    def kv_hidden(self) -> int:
        """Width of the keys (and of the values): kv_heads x head dimension."""
        return self.kv_heads * (self.hidden // self.heads)

    @property
    def crop_tokens(self) -> int:
        """Tokens of one crop in the CLIP tower: the patches plus CLS."""
        return (self.crop // self.patch) ** 2 + 1

    @property
    def tokens_per_crop(self) -> int:
        """Image tokens per crop after the 2x2 merge (144 for the real model)."""
        return (self.crop // self.patch // 2) ** 2

    # ---------------------------------------------------------------- linear layers
    def decoder_linears(self) -> list[LinearShape]:
        """The Linear layers of the decoder blocks (``lm_head`` apart)."""
        h, i, n = self.hidden, self.intermediate, self.layers
        return [
            LinearShape("qkv_proj", h, h + 2 * self.kv_hidden, n),
            LinearShape("o_proj", h, h, n),
            LinearShape("gate_up_proj", h, 2 * i, n),
            LinearShape("down_proj", i, h, n),
        ]

    def vision_linears(self) -> list[LinearShape]:
        """The Linear layers of the CLIP encoder (all loaded layers: adapters go on every one)."""
        c, iv, n = self.v_hidden, self.v_intermediate, self.v_layers
        square = [LinearShape(name, c, c, n, True) for name in ("q_proj", "k_proj", "v_proj")]
        return [
            *square,
            LinearShape("out_proj", c, c, n, True),
            LinearShape("fc1", c, iv, n, True),
            LinearShape("fc2", iv, c, n, True),
        ]

    def projector_linears(self) -> list[LinearShape]:
        """The HD projector's MLP: 4C -> H -> H."""
        return [
            LinearShape("img_projection.0", 4 * self.v_hidden, self.hidden, 1, True),
            LinearShape("img_projection.2", self.hidden, self.hidden, 1, True),
        ]

    # ---------------------------------------------------------------- parameter counts
    def decoder_params(self) -> int:
        """Embeddings, decoder blocks (linears and two RMSNorms each), final norm and ``lm_head``."""
        h = self.hidden
        blocks = sum(lin.params for lin in self.decoder_linears()) + self.layers * 2 * h
        head = 0 if self.tied_embeddings else self.vocab * h
        return self.vocab * h + blocks + h + head

    def vision_params(self) -> int:
        """The CLIP tower: patch convolution (no bias), class and position embeddings,
        pre-/post-LayerNorms and every encoder layer (two LayerNorms each)."""
        c = self.v_hidden
        embeddings = 3 * self.patch**2 * c + c + self.crop_tokens * c
        layers = sum(lin.params for lin in self.vision_linears()) + self.v_layers * 4 * c
        return embeddings + 2 * c + layers + 2 * c

    def vision_layer_params(self) -> int:
        """Parameters of one CLIP encoder layer."""
        return sum(lin.params for lin in self.vision_linears()) // self.v_layers + 4 * self.v_hidden

    def projector_params(self) -> int:
        """The projector MLP and the learned ``glb_GN`` / ``sub_GN`` separators (4C each)."""
        return sum(lin.params for lin in self.projector_linears()) + 2 * 4 * self.v_hidden

    def total_params(self) -> int:
        return self.decoder_params() + self.vision_params() + self.projector_params()

    def decoder_linear_params(self) -> int:
        """Parameters of the decoder blocks' Linear layers (what QLoRA quantizes)."""
        return sum(lin.params for lin in self.decoder_linears())


def image_grid(width: int, height: int, num_crops: int, crop: int = 336) -> tuple[int, int]:
    """(rows, columns) of 336 px crops the HD transform gives a ``width x height`` photo."""
    geometry = hd_geometry(width, height, num_crops, crop)
    return geometry.height // crop, geometry.width // crop


def image_tokens(rows: int, cols: int, tokens_per_crop: int = 144) -> int:
    """Image tokens of an ``rows x cols`` crop grid: ``(h*w + 1) * 144 + 1 + (h + 1) * 12``.

    Every crop (and the global view) gives ``tokens_per_crop`` tokens laid out in
    sqrt(tokens_per_crop) rows, each sub-crop row of the grid and the global view's rows end
    with a newline token, and one separator sits between the sub-crops and the global view.
    """
    side = math.isqrt(tokens_per_crop)
    return (rows * cols + 1) * tokens_per_crop + 1 + (rows + 1) * side
