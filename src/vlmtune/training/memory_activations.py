"""Activation memory of one Phi-3-V training step: what autograd keeps, per token, per layer.

The counts follow the tensors that transformers' ``Phi3DecoderLayer`` and ``CLIPEncoderLayer``
(transformers 5), peft's LoRA ``Linear`` and vlmtune's HD projector save for the backward pass
(autograd saves an operand only when the gradient of the *other* operand is needed: a frozen
Linear keeps no input, a trainable one keeps it). Notation, per token: H hidden, Hkv key/value
width, I intermediate, n heads, r LoRA rank; C, Iv, n_v the CLIP sizes. Byte widths:

* ``a``: what matmuls produce (2 under bf16/fp16 autocast, 4 in float32);
* ``s``: the residual stream, i.e. the dtype of the weights (4 for float32 master weights under
  autocast, for QLoRA's upcast embeddings, and in float32 runs; else ``a``);
* ``o``: what the decoder's Linear layers return (``a``; 4 for QLoRA, whose bitsandbytes layers
  cast back to their float32 input);
* ``m``: what LoRA's dropout keeps per element: a 1-byte mask on CUDA (``native_dropout``), the
  float32 noise tensor on CPU (4), nothing without dropout.

**Decoder block** (non-checkpointed), bytes per token:

* two RMSNorms: each upcasts its input to float32 and keeps it (4H), and with a trainable norm
  weight also the normalised input (sH): ``8H [+ 2sH]``;
* attention: ``v`` is a view of the fused ``qkv`` output, so SDPA keeps the whole output
  (o(H + 2Hkv)) plus the rotated ``q`` (aH) and ``k`` (aHkv) it was called with, its output (aH)
  and the log-sum-exp (4n); with ``o != a`` (QLoRA) SDPA's casts are copies: a(H + 2Hkv) instead
  of the view; the attention output is copied to [B, T, H] for ``o_proj`` (aH, its input);
* MLP: ``silu(gate)`` keeps ``gate``, a view of the ``gate_up`` output (2oI), and the product keeps
  ``silu(gate)`` (oI);
* each Linear's input: trainable ``a x d_in`` (its autocast copy); LoRA-adapted ``(m + a) d_in +
  a r`` (dropout mask, the adapter's input, the rank-r output); frozen: nothing. The inputs are
  H (qkv), H (o_proj), H (gate_up) and I (down_proj).

Full fine-tuning in float32 gives 52H + 16I; in bf16 with float32 masters 34H + 8I (170 kB a
token at Phi-3's sizes); LoRA in bf16 about the same. With **gradient checkpointing** a block
keeps only its input (sH) and one block is recomputed at a time in the backward pass.
**Eager attention** keeps, per layer, the float32 softmax (4 n T^2 a sample) and its cast (a n T^2
when a != 4) instead of SDPA's output and log-sum-exp, and ``probs @ v`` keeps a copy of ``v``
(aHkv) rather than the ``qkv`` view when the batch has several samples; SDPA and flash attention
never build the T x T matrix. A padded batch builds one causal mask [B, 1, T, T] shared by the
layers: bool for SDPA, s bytes for eager, none for flash.

**CLIP layer** (non-checkpointed): LayerNorms run in float32 under autocast and keep their input
(2 x 4C); SDPA keeps q, k, v and its output (4aC) and the log-sum-exp (4n_v), and its output is
already laid out [B, T, C], so ``out_proj`` keeps it without a copy; quick-GELU
``x * sigmoid(1.702 x)`` keeps ``x`` and the sigmoid (2aIv); Linear inputs as above, where q, k and
v each cast the float32 LayerNorm output separately (3aC, or one shared 4C in float32). A frozen
tower that no adapter touches keeps nothing (no input needs a gradient), except under gradient
checkpointing: torch's non-reentrant checkpoint holds every checkpointed call's inputs on a graph
node of its own, so the tower's embeddings and each layer's input stay alive (measured), and with
them the token embeddings and a frozen projector's output.

**Logits**: transformers computes logits for every position, upcasts them to float32 and takes
``cross_entropy`` (log-softmax + NLL). Per token of the padded batch: forward peak ``aV`` (the
logits, alive until the loss returns) ``+ 4V`` (the float32 copy, when a != 4) ``+ 4V`` (the
log-softmax, kept); backward peak 12V (the kept log-softmax, the gradient NLL writes into it
and the gradient log-softmax returns). At Phi-3's V = 32064 that is 385 kB a token, more than
two decoder blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vlmtune.training.memory_shape import ModelShape

if TYPE_CHECKING:
    from vlmtune.training.memory_step import StepSetup

__all__ = [
    "Precision",
    "StepActivations",
    "decoder_block_bytes",
    "decoder_block_transient",
    "decoder_mlp_bytes",
    "eager_attention_bytes",
    "logits_bytes",
    "step_activations",
    "vision_forward_working",
    "vision_layer_bytes",
    "vision_layer_transient",
]


@dataclass(frozen=True)
class Precision:
    """Byte widths of a run (see the module docstring): ``a`` compute, ``s`` decoder residual
    stream, ``vs`` vision residual stream, ``o`` decoder Linear outputs, ``mask`` LoRA dropout."""

    a: int
    s: int
    vs: int
    o: int
    mask: int


def _linear_input(kind: str, d_in: int, p: Precision, r: int) -> int:
    """Bytes per token a Linear keeps of its input: ``kind`` is train, lora or frozen."""
    if kind == "train":
        return p.a * d_in
    if kind == "lora":
        return (p.mask + p.a) * d_in + p.a * r
    return 0


def decoder_block_bytes(
    shape: ModelShape,
    p: Precision,
    linears: str,
    norms_train: bool,
    r: int,
    eager: bool = False,
    batch: int = 1,
) -> int:
    """Bytes per token one non-checkpointed decoder block keeps for the backward pass, the
    [heads, T, T] probabilities of eager attention apart (:func:`eager_attention_bytes`).

    ``linears``: ``train`` (full), ``lora`` (adapters on qkv, o, gate_up, down) or ``frozen``.
    Eager attention keeps no output nor log-sum-exp; its ``probs @ v`` keeps ``v``, which stays
    a view of the ``qkv`` output only for a batch of one (batched matmul folds batch and heads
    into one dimension, and a strided view of two samples needs a copy).
    """
    h, hkv = shape.hidden, shape.kv_hidden
    norm = 4 * h + (p.s * h if norms_train else 0)
    qkv = p.o * (h + 2 * hkv) if p.o == p.a else p.a * (h + 2 * hkv)
    if eager and batch > 1:
        qkv = p.a * hkv  # the copy of v
    output = 0 if eager else p.a * h + 4 * shape.heads
    attention = norm + qkv + p.a * (h + hkv) + output
    inputs = sum(_linear_input(linears, d, p, r) for d in (h, h))
    return attention + inputs + decoder_mlp_bytes(shape, p, linears, norms_train, r)


def decoder_mlp_bytes(
    shape: ModelShape, p: Precision, linears: str, norms_train: bool, r: int
) -> int:
    """The MLP half of :func:`decoder_block_bytes`: the second RMSNorm, ``gate_up``'s output,
    ``silu(gate)`` and the inputs of ``gate_up`` and ``down_proj``."""
    h, i = shape.hidden, shape.intermediate
    norm = 4 * h + (p.s * h if norms_train else 0)
    inputs = _linear_input(linears, h, p, r) + _linear_input(linears, i, p, r)
    return norm + 3 * p.o * i + inputs


def decoder_block_transient(shape: ModelShape, p: Precision) -> int:
    """Bytes per token a block's backward holds beyond what it kept, at its widest point (the
    MLP): the gradient arriving at the I-wide product and the two gradients the product's
    backward returns, less the product it frees (2aI), and the gradient of the block's output
    (sH)."""
    return 2 * p.a * shape.intermediate + p.s * shape.hidden


def vision_layer_bytes(
    shape: ModelShape, p: Precision, linears: str, r: int, eager: bool = False
) -> int:
    """Bytes per CLIP token one non-checkpointed encoder layer keeps (``linears`` as above; the
    eager probabilities apart). SDPA's output is already laid out as [B, T, C] (q, k and v are
    views of [B, T, C] projections), so ``out_proj`` keeps it without a copy; eager attention
    keeps the copy ``out_proj`` gets instead, and no log-sum-exp."""
    c, iv = shape.v_hidden, shape.v_intermediate
    kept = 2 * 4 * c + 4 * p.a * c + (0 if eager else 4 * shape.v_heads) + 2 * p.a * iv
    if linears == "train":  # out_proj keeps SDPA's output itself (already counted)
        qkv_inputs = 3 * p.a * c if p.a != 4 else 4 * c
        return kept + qkv_inputs + p.a * c + p.a * iv
    if linears == "lora":
        return kept + sum(_linear_input("lora", d, p, r) for d in (c, c, c, c, c, iv))
    return kept


def vision_layer_transient(shape: ModelShape, p: Precision) -> int:
    """Bytes per CLIP token a layer's backward holds beyond what it kept: as for a decoder block,
    two Iv-wide gradients at quick-GELU's product and the gradient of the layer's output."""
    return 2 * p.a * shape.v_intermediate + p.vs * shape.v_hidden


def vision_forward_working(shape: ModelShape, p: Precision) -> int:
    """Bytes per CLIP token one layer holds while it runs without keeping anything (frozen tower):
    its input and output, the float32 LayerNorm output and, at the widest point, the MLP's
    ``fc1`` output, ``1.702 x`` and the sigmoid."""
    c, iv = shape.v_hidden, shape.v_intermediate
    return 2 * p.vs * c + 4 * c + 3 * p.a * iv


def eager_attention_bytes(p: Precision, heads: int, length: int) -> int:
    """Bytes per sample eager attention keeps per layer: the float32 softmax [heads, T, T] and,
    when the compute dtype is narrower, its cast back."""
    per_element = 4 + (p.a if p.a != 4 else 0)
    return per_element * heads * length * length


def logits_bytes(vocab: int, a: int) -> dict[str, int]:
    """Per token of the padded batch: ``forward`` and ``backward`` peaks of the logits and the
    loss, and what stays ``kept`` between them (see the module docstring)."""
    upcast = 4 * vocab if a != 4 else 0
    return {
        "forward": a * vocab + upcast + 4 * vocab,
        "kept": 4 * vocab,
        "backward": 12 * vocab,
    }


# ------------------------------------------------------------------------ activations
@dataclass
class StepActivations:
    """Bytes of one step's activations: what the vision tower, the projector and the decoder keep
    after the forward (``*_kept``), hold while running (``*_forward``) and during the backward of
    their last and first layer (``*_backward``, ``*_bottom``); the inputs; the logits' peaks."""

    vision_kept: float = 0.0
    vision_forward: float = 0.0
    vision_backward: float = 0.0
    vision_bottom: float = 0.0
    projector: float = 0.0
    decoder_kept: float = 0.0
    decoder_backward: float = 0.0
    decoder_bottom: float = 0.0
    inputs_vision: float = 0.0
    inputs_decoder: float = 0.0
    lingering: float = 0.0
    """Decoder-side tensors checkpointing keeps alive to the step's end (see the module docs)."""
    logits: dict[str, float] = field(default_factory=dict)


def step_activations(shape: ModelShape, setup: StepSetup, p: Precision) -> StepActivations:
    """Bytes of a step's activations at the moments :func:`~vlmtune.training.memory_step.step_phases`
    looks at: kept after the forward, during the backward of the last and the first layer."""
    out = StepActivations()
    b, t = setup.batch, setup.seq_len
    tokens, vision_tokens = b * t, b * setup.crops * shape.crop_tokens
    out.inputs_vision = 4.0 * b * setup.pixel_crops * 3 * shape.crop**2
    out.inputs_decoder = 3 * 8.0 * tokens
    _vision(shape, setup, p, vision_tokens, out)
    _projector(shape, setup, p, b * setup.image_tokens, out)
    _decoder(shape, setup, p, out)
    out.logits = {k: v * tokens for k, v in logits_bytes(shape.vocab, p.a).items()}
    if setup.uses_lora and setup.lora_targets == "all":  # lora_B's V-wide output before the add
        out.logits["forward"] += p.a * shape.vocab * tokens
    return out


def _vision(
    shape: ModelShape, setup: StepSetup, p: Precision, n: int, out: StepActivations
) -> None:
    """CLIP activations over ``n`` tokens (every used crop of every image of the batch)."""
    eager = setup.attn == "eager"
    per_crop_eager = eager_attention_bytes(p, shape.v_heads, shape.crop_tokens)
    crops = setup.batch * setup.crops
    if not setup.trains_vision:  # nothing kept: one layer's working set while it runs
        transient = 4 * shape.v_heads * shape.crop_tokens**2 * crops if eager else 0
        out.vision_forward = vision_forward_working(shape, p) * n + transient
        if setup.checkpointing:
            # Measured: torch's non-reentrant checkpoint keeps each checkpointed call's inputs
            # (on a graph node of its own) even when nothing in the layer needs a gradient, so
            # a frozen tower under checkpointing holds its embeddings and every layer's input.
            out.vision_kept = (shape.v_layers_used + 2) * p.vs * shape.v_hidden * n
            out.vision_forward += out.vision_kept
        return
    linears = "train" if setup.mode == "full" else "lora"
    layer = vision_layer_bytes(shape, p, linears, setup.lora_r, eager) * n
    layer += per_crop_eager * crops if eager else 0
    kept_layer = p.vs * shape.v_hidden * n if setup.checkpointing else layer
    pre = 4 * shape.v_hidden * n  # the embeddings before pre_layrnorm
    if setup.mode == "full":
        pre += (4 + (p.a if p.a != 4 else 0)) * 3 * shape.crop**2 * crops  # the convolution's input
    recompute = layer if setup.checkpointing else 0
    transient = vision_layer_transient(shape, p) * n
    out.vision_kept = pre + shape.v_layers_used * kept_layer
    out.vision_forward = out.vision_kept + recompute
    out.vision_backward = out.vision_kept + recompute + transient
    out.vision_bottom = pre + kept_layer + recompute + transient


def _projector(
    shape: ModelShape, setup: StepSetup, p: Precision, n: int, out: StepActivations
) -> None:
    """What the HD projector keeps over ``n`` image tokens: its inputs when it trains, GELU's
    input when only a gradient passes through it, adapters' inputs when it is adapted."""
    wide, h = 4 * shape.v_hidden, shape.hidden
    if setup.mode in ("full", "frozen_vision"):
        out.projector = (p.a * wide + 2 * p.a * h) * n
    elif setup.trains_projector:
        lora = (p.mask + p.a) * (wide + h) + 2 * p.a * setup.lora_r
        out.projector = (p.a * h + lora) * n


def _decoder(shape: ModelShape, setup: StepSetup, p: Precision, out: StepActivations) -> None:
    b, t, h = setup.batch, setup.seq_len, shape.hidden
    tokens = b * t
    linears = "lora" if setup.uses_lora else "train"
    norms_train = not setup.uses_lora
    eager = setup.attn == "eager"
    block = decoder_block_bytes(shape, p, linears, norms_train, setup.lora_r, eager, b) * tokens
    if eager:
        block += eager_attention_bytes(p, shape.heads, t) * b
    kept_block = p.s * h * tokens if setup.checkpointing else block
    head_input = {"train": p.a * h, "lora": 0}[linears]
    if setup.uses_lora and setup.lora_targets == "all":
        head_input = (p.mask + p.a) * h + p.a * setup.lora_r
    final_norm = 4 * h + (p.s * h if norms_train else 0)
    rotary = 2 * (h // shape.heads) * p.s
    extras = (final_norm + head_input + rotary) * tokens + _mask_bytes(setup, p)
    lingering = 0.0
    if setup.checkpointing:  # measured alongside the frozen tower's inputs (see _vision): the
        # token embeddings, and a frozen projector's output, stay alive through the step too
        frozen_projector = 0 if setup.trains_projector else b * setup.image_tokens
        lingering = p.s * h * (tokens + frozen_projector)
    out.lingering = lingering
    transient = decoder_block_transient(shape, p) * tokens
    if eager:  # at the softmax's backward: the gradient arriving and the one it returns, in
        # float32, while the block's MLP has already freed what it kept
        mlp = decoder_mlp_bytes(shape, p, linears, norms_train, setup.lora_r) * tokens
        transient = max(transient, 2 * 4 * shape.heads * t * t * b - mlp)
    recompute = block if setup.checkpointing else 0
    out.decoder_kept = shape.layers * kept_block + extras + lingering
    # by the time the blocks' backward runs, the final norm and lm_head have freed their inputs
    out.decoder_backward = shape.layers * kept_block + recompute + transient + lingering
    out.decoder_bottom = kept_block + recompute + transient + lingering


def _mask_bytes(setup: StepSetup, p: Precision) -> float:
    """The causal mask [B, 1, T, T] a padded batch needs (none for flash attention)."""
    area = setup.batch * setup.seq_len**2
    if setup.attn == "eager":
        return float(area * p.s)
    if setup.attn == "sdpa" and setup.batch > 1:
        return float(area)
    return 0.0
