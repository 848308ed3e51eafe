"""Peak memory of one steady-state training step, phase by phase, on one device.

What lives on the device (see ``training/build.py`` for the modes):

* **weights**: LoRA keeps the frozen base in the compute dtype and the adapters in float32 (peft
  upcasts 16-bit adapters); QLoRA stores the decoder blocks' Linear weights as NF4 with double
  quantisation (0.5 byte + an 8-bit absmax per 64 weights + a float32 absmax per 256 blocks) and
  every other weight in float32 (peft's ``prepare_model_for_kbit_training`` upcasts them); full
  and frozen-vision fine-tuning keep float32 master weights (bf16 autocast) unless DeepSpeed
  holds the masters, when the model is in the compute dtype. Under 16-bit autocast every
  *trainable* float32 weight that goes through a Linear or convolution is also cast once and
  cached until the forward pass ends (2 bytes each; with gradient checkpointing the copies die
  with the forward, without it the backward keeps them until it has used them). They are
  counted with the weights.
* **gradients** of the trainable parameters, in their dtype; AdamW's two **optimizer states**
  (8 bytes a parameter; DeepSpeed adds its float32 master: 12 bytes). ZeRO (Rajbhandari et al.,
  2020) shards over G GPUs the states (stage 1), the gradients (2) and the weights (3):
  2P + 2P + 12P/G, 2P + (2 + 12)P/G, (2 + 2 + 12)P/G bytes for P trainable parameters, plus
  communication buffers (see :func:`_zero_gradients`) and, in the step, a float32 gradient
  partition (4P/G). Plain data parallelism (DDP) keeps a bucket copy of the gradients.
* **activations** and **logits** (:mod:`vlmtune.training.memory_activations`).

A steady-state step (the optimizer states exist from the first step on) passes through phases
whose totals are computed separately; the peak is the largest. In the backward pass the memory
moves linearly from "all activations, no gradients" to "all gradients, no activations", so a
sweep over the layers peaks at one of its two ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlmtune.training.memory_activations import Precision, step_activations
from vlmtune.training.memory_shape import ModelShape

__all__ = ["PARTS", "Phase", "StepSetup", "step_phases"]

PARTS = (
    "weights",
    "gradients",
    "optimizer",
    "activations_decoder",
    "activations_vision",
    "logits",
)
"""The parts a phase's memory is split into."""

NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
"""Bytes per NF4 weight with double quantisation (bitsandbytes ``compress_statistics``)."""


@dataclass(frozen=True)
class StepSetup:
    """One training configuration in numbers (see :class:`vlmtune.training.plan.PlanArgs`)."""

    mode: str
    compute_bytes: int
    batch: int
    seq_len: int
    crops: int
    """Crops per image that run through CLIP (1 + rows x columns)."""
    pixel_crops: int
    """Crops per image in ``pixel_values`` (num_crops + 1)."""
    image_tokens: int
    checkpointing: bool
    attn: str
    lora_r: int = 16
    lora_dropout: bool = True
    lora_targets: str = "decoder"
    gpus: int = 1
    zero: int = 0
    grad_accum: int = 1
    reduce_bucket: int = 0
    """ZeRO reduce_bucket_size (elements)."""
    allgather_bucket: int = 500_000_000
    """ZeRO allgather_bucket_size (stages 1-2; configs/deepspeed_zero2.json's 5e8)."""
    prefetch_bucket: int = 0
    """ZeRO-3 stage3_prefetch_bucket_size (elements)."""
    cuda: bool = True
    """False for a CPU run (only LoRA's dropout differs: see :class:`Precision`)."""

    @property
    def trains_vision(self) -> bool:
        """Gradients flow into the CLIP tower (full mode, or adapters on it)."""
        return self.mode == "full" or (self.uses_lora and self.lora_targets == "all")

    @property
    def trains_projector(self) -> bool:
        return self.mode in ("full", "frozen_vision") or (
            self.uses_lora and self.lora_targets == "all"
        )

    @property
    def uses_lora(self) -> bool:
        return self.mode in ("lora", "qlora")


@dataclass
class Phase:
    """Bytes per part at one moment of the step."""

    name: str
    parts: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.parts.values())


def precision(setup: StepSetup) -> Precision:
    """The byte widths of ``setup`` (see :mod:`vlmtune.training.memory_activations`)."""
    a = setup.compute_bytes
    mask = (1 if setup.cuda else 4) if setup.lora_dropout else 0
    if setup.mode == "qlora":
        return Precision(a=a, s=4, vs=4, o=4, mask=mask)
    if setup.mode == "lora":
        return Precision(a=a, s=a, vs=a, o=a, mask=mask)
    master = 4 if setup.zero == 0 else a
    return Precision(a=a, s=master, vs=master, o=a, mask=0)


# ------------------------------------------------------------------------ parameters
def _adapter_params(shape: ModelShape, setup: StepSetup) -> dict[str, int]:
    """LoRA parameters per component: r (d_in + d_out) for every adapted Linear."""
    r = setup.lora_r
    out = {"decoder": sum(r * (x.d_in + x.d_out) * x.count for x in shape.decoder_linears())}
    if setup.lora_targets == "all":
        out["head"] = r * (shape.hidden + shape.vocab)
        used = shape.v_layers_used
        out["vision"] = sum(r * (x.d_in + x.d_out) * used for x in shape.vision_linears())
        out["projector"] = sum(r * (x.d_in + x.d_out) for x in shape.projector_linears())
    return out


def trainable_params(shape: ModelShape, setup: StepSetup) -> dict[str, int]:
    """Parameters that get a gradient (and optimizer states), per component: head (lm_head and
    the final norm), decoder (blocks), embed, projector, vision. The CLIP layers after
    ``layer_idx`` and ``post_layernorm`` are never computed, so they get neither."""
    if setup.uses_lora:
        return _adapter_params(shape, setup)
    h = shape.hidden
    head = (0 if shape.tied_embeddings else shape.vocab * h) + h
    out = {
        "head": head,
        "decoder": shape.decoder_params() - head - shape.vocab * h,
        "embed": shape.vocab * h,
        "projector": shape.projector_params(),
    }
    if setup.mode == "full":
        layer = shape.vision_layer_params()
        unused = (shape.v_layers - shape.v_layers_used) * layer + 2 * shape.v_hidden
        out["vision"] = shape.vision_params() - unused
    return out


def _cast_params(shape: ModelShape, setup: StepSetup, trainable: dict[str, int]) -> dict[str, int]:
    """Trainable parameters that autocast casts and caches (Linear and convolution weights)."""
    if setup.compute_bytes == 4 or setup.zero > 0:
        return {}
    if setup.uses_lora:
        return dict(trainable)
    h = shape.hidden
    out = {
        "head": trainable["head"] - h,
        "decoder": shape.decoder_linear_params(),
        "projector": sum(x.params for x in shape.projector_linears()),
    }
    if "vision" in trainable:
        conv = 3 * shape.patch**2 * shape.v_hidden
        used = shape.v_layers_used / shape.v_layers
        out["vision"] = int(sum(x.params for x in shape.vision_linears()) * used) + conv
    return out


def weights_bytes(shape: ModelShape, setup: StepSetup) -> float:
    """Bytes of the model's weights on one device (without the autocast copies)."""
    total, a = shape.total_params(), setup.compute_bytes
    adapters = sum(_adapter_params(shape, setup).values()) if setup.uses_lora else 0
    if setup.mode == "lora":
        return total * a + adapters * 4
    if setup.mode == "qlora":
        quantised = shape.decoder_linear_params()
        return quantised * NF4_BYTES + (total - quantised) * 4 + adapters * 4
    if setup.zero == 0:
        return total * 4
    if setup.zero == 3:
        return total * a / setup.gpus + 2 * _largest_block(shape) * a
    return total * a


def _largest_block(shape: ModelShape) -> int:
    """Parameters of one decoder block: what ZeRO-3 gathers (and prefetches) at a time."""
    return shape.decoder_linear_params() // shape.layers + 2 * shape.hidden


def _grad_width(setup: StepSetup) -> int:
    """Bytes of one gradient: float32 for adapters and float32 masters, the compute dtype
    under DeepSpeed."""
    return 4 if setup.uses_lora or setup.zero == 0 else setup.compute_bytes


def optimizer_bytes(setup: StepSetup, trainable: int) -> float:
    """AdamW's states: m and v in float32 (8 bytes), plus DeepSpeed's float32 master (12 bytes
    sharded over the GPUs under ZeRO)."""
    if setup.zero == 0:
        return 8.0 * trainable
    return 12.0 * trainable / setup.gpus


def _zero_gradients(setup: StepSetup, trainable: int) -> float:
    """Gradient bytes under ZeRO: full compute-dtype gradients (stage 1) or their shard (2-3),
    plus the communication buffers.

    With ``overlap_comm`` (on in configs/deepspeed_zero*.json), DeepSpeed's buffers take 4.5
    times the reduce and all-gather bucket sizes (the rule of the transformers DeepSpeed guide:
    9 GB at 5e8 elements each); stage 3 all-gathers through its prefetch bucket instead.
    """
    a = setup.compute_bytes
    grads = a * trainable if setup.zero == 1 else a * trainable / setup.gpus
    gather = setup.prefetch_bucket if setup.zero == 3 else setup.allgather_bucket
    return grads + 4.5 * (setup.reduce_bucket + gather) * a


# ------------------------------------------------------------------------ phases
def step_phases(shape: ModelShape, setup: StepSetup) -> list[Phase]:
    """Bytes per part at each phase of a steady-state training step (see the module docstring).

    Phases: vision forward, loss forward, loss backward, decoder backward (last and first block,
    each at its MLP, where a block's backward peaks: the blocks above it have their gradients,
    it has only ``down_proj``'s), vision backward (likewise, when the tower gets gradients),
    optimizer step. The batch's inputs are alive throughout.
    """
    p = precision(setup)
    act = step_activations(shape, setup, p)
    trainable = trainable_params(shape, setup)
    psi = sum(trainable.values())
    cast = {k: 2.0 * v for k, v in _cast_params(shape, setup, trainable).items()}
    weights = weights_bytes(shape, setup)
    width = _grad_width(setup)
    grads = {k: float(width * v) for k, v in trainable.items()}
    buckets, accumulated = _persistent_gradients(setup, grads, psi)
    persistent = buckets + accumulated
    block = grads.get("decoder", 0.0) / shape.layers
    mlp_share = shape.intermediate * shape.hidden / (shape.decoder_linear_params() / shape.layers)
    v_layer = grads.get("vision", 0.0) / max(shape.v_layers_used, 1)

    def grad(*parts: str, extra: float = 0.0) -> float:
        """Gradients present once the backward has reached ``parts`` (and ``extra`` bytes)."""
        if setup.zero >= 2:
            return _zero_gradients(setup, psi)
        return buckets + max(accumulated, sum(grads.get(k, 0.0) for k in parts) + extra)

    def cache(*parts: str) -> float:
        return 0.0 if setup.checkpointing else sum(cast.get(k, 0.0) for k in parts)

    vision = act.inputs_vision + act.projector
    frozen_kept = 0.0 if setup.trains_vision else act.vision_kept  # held to the step's end
    decoder = act.inputs_decoder
    kept_vision, kept_decoder = act.vision_kept + vision, act.decoder_kept + decoder
    below_decoder = grads.get("decoder", 0.0) - block
    phases = [
        Phase("vision forward", {
            "weights": weights + cast.get("vision", 0.0), "gradients": persistent,
            "activations_vision": act.vision_forward + act.inputs_vision,
            "activations_decoder": decoder,
        }),
        Phase("loss forward", {
            "weights": weights + sum(cast.values()), "gradients": persistent,
            "activations_vision": kept_vision, "activations_decoder": kept_decoder,
            "logits": act.logits["forward"],
        }),
        Phase("loss backward", {
            "weights": weights + cache(*cast), "gradients": persistent,
            "activations_vision": kept_vision, "activations_decoder": kept_decoder,
            "logits": act.logits["backward"],
        }),
        Phase("decoder backward, last block", {
            "weights": weights + cache(*cast), "gradients": grad("head", extra=mlp_share * block),
            "activations_vision": kept_vision,
            "activations_decoder": act.decoder_backward + decoder,
        }),
        Phase("decoder backward, first block", {
            "weights": weights + cache("vision", "projector"),
            "gradients": grad("head", extra=below_decoder + mlp_share * block),
            "activations_vision": kept_vision,
            "activations_decoder": act.decoder_bottom + decoder,
        }),
    ]  # fmt: skip
    if setup.trains_vision:
        # the embedding's backward runs after the vision branch (autograd runs the most recently
        # created ready node first, and the embedding lookup precedes the vision tower)
        above = ("head", "decoder", "projector")
        phases += [
            Phase("vision backward, last layer", {  # fc2 is a third of a CLIP layer's weights
                "weights": weights + cache("vision"), "gradients": grad(*above, extra=v_layer / 3),
                "activations_vision": act.vision_backward + vision,
                "activations_decoder": decoder,
            }),
            Phase("vision backward, first layer", {
                "weights": weights,
                "gradients": grad(*above, extra=grads.get("vision", 0.0) - v_layer * 2 / 3),
                "activations_vision": act.vision_bottom + vision,
                "activations_decoder": decoder,
            }),
        ]  # fmt: skip
    step_extra = 4.0 * psi / setup.gpus if setup.zero > 0 else 0.0
    phases.append(
        Phase("optimizer step", {
            "weights": weights, "gradients": grad(*grads) + step_extra,
            "activations_vision": act.inputs_vision + frozen_kept,
            "activations_decoder": decoder,
        })
    )  # fmt: skip
    optimizer = optimizer_bytes(setup, psi)
    for phase in phases:
        phase.parts["optimizer"] = optimizer
        phase.parts = {part: float(phase.parts.get(part, 0.0)) for part in PARTS}
    return phases


def _persistent_gradients(
    setup: StepSetup, grads: dict[str, float], psi: int
) -> tuple[float, float]:
    """Gradient bytes present through the whole step: (DDP's bucket copy of the gradients, or
    ZeRO-2/3's shard and buckets; the gradients themselves when micro-batches accumulate)."""
    if setup.zero >= 2:
        return _zero_gradients(setup, psi), 0.0
    total = sum(grads.values())
    buckets = total if setup.gpus > 1 and setup.zero == 0 else 0.0  # gradient_as_bucket_view off
    return buckets, total if setup.grad_accum > 1 else 0.0
