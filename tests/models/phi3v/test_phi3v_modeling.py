"""Phi3VForCausalLM on a tiny random model: batching, padding, caches, placeholders, components."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import pad_rows

from vlmtune.models.phi3v import Phi3VForCausalLM, build_tiny_phi3v, tiny_phi3v_config

IMAGES_OF_SAMPLE = [(0, 1), (1, 3)]  # tiny_batch: sample 0 has image 0, sample 1 images 1 and 2


def _single(model, batch, i):
    start, stop = IMAGES_OF_SAMPLE[i]
    return model(
        input_ids=torch.tensor([batch["rows"][i]]),
        pixel_values=batch["pixel_values"][start:stop],
        image_sizes=batch["image_sizes"][start:stop],
    ).logits[0]


@pytest.mark.parametrize("side", ["left", "right"])
def test_batched_forward_equals_per_sample(tiny_model, tiny_batch, side):
    ids, mask = pad_rows(tiny_batch["rows"], side)
    ids_before, mask_before = ids.clone(), mask.clone()
    pixels_before = tiny_batch["pixel_values"].clone()
    with torch.no_grad():
        batched = tiny_model(
            input_ids=ids,
            attention_mask=mask,
            pixel_values=tiny_batch["pixel_values"],
            image_sizes=tiny_batch["image_sizes"],
        ).logits
        for i in range(2):
            alone = _single(tiny_model, tiny_batch, i)
            torch.testing.assert_close(batched[i][mask[i].bool()], alone, atol=1e-5, rtol=1e-5)
    assert torch.equal(ids, ids_before) and torch.equal(mask, mask_before)
    assert torch.equal(tiny_batch["pixel_values"], pixels_before)


def test_forward_from_embed_inputs_equals_forward_from_ids(tiny_model, tiny_batch):
    ids, mask = pad_rows(tiny_batch["rows"], "right")
    kw = {"pixel_values": tiny_batch["pixel_values"], "image_sizes": tiny_batch["image_sizes"]}
    with torch.no_grad():
        embeds = tiny_model.embed_inputs(ids, **kw)
        assert embeds.shape == (*ids.shape, tiny_model.config.hidden_size)
        a = tiny_model(input_ids=ids, attention_mask=mask, **kw).logits
        b = tiny_model(inputs_embeds=embeds, attention_mask=mask).logits
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_image_features_land_on_placeholders(tiny_model, tiny_batch):
    ids, _ = pad_rows(tiny_batch["rows"], "right")
    with torch.no_grad():
        embeds = tiny_model.embed_inputs(ids, tiny_batch["pixel_values"], tiny_batch["image_sizes"])
        features = torch.cat(
            tiny_model.image_embedding(tiny_batch["pixel_values"], tiny_batch["image_sizes"])
        )
        text = tiny_model.get_input_embeddings()(ids.clamp_min(0))
    placeholders = ids < 0
    torch.testing.assert_close(embeds[placeholders], features)
    torch.testing.assert_close(embeds[~placeholders], text[~placeholders])
    assert [
        f.shape[0]
        for f in tiny_model.image_embedding(tiny_batch["pixel_values"], tiny_batch["image_sizes"])
    ] == tiny_batch["counts"]


def test_placeholders_never_index_the_embedding_table(tiny_batch):
    model = build_tiny_phi3v(vocab_size=128, pad_token_id=0, eos_token_id=2)
    row = tiny_batch["rows"][0]
    ids = torch.tensor([row])
    assert 0 not in row
    model.embed_inputs(
        ids, tiny_batch["pixel_values"][:1], tiny_batch["image_sizes"][:1]
    ).sum().backward()
    grad = model.get_input_embeddings().weight.grad
    assert (
        torch.count_nonzero(grad[0]) == 0
    )  # row 0 stands in for placeholders; it gets nothing back
    assert torch.count_nonzero(grad[5]) > 0


def test_placeholder_count_mismatch_names_both_numbers(tiny_model, tiny_batch):
    row = tiny_batch["rows"][0][:-5] + [7]  # drop 4 placeholders and a few tokens
    ids = torch.tensor([row])
    n = int((ids < 0).sum())
    with pytest.raises(
        ValueError, match=f"{n} image placeholder.*{tiny_batch['counts'][0]} feature"
    ):
        tiny_model(
            input_ids=ids,
            pixel_values=tiny_batch["pixel_values"][:1],
            image_sizes=tiny_batch["image_sizes"][:1],
        )
    with pytest.raises(ValueError, match="no pixel_values"):
        tiny_model(input_ids=torch.tensor([tiny_batch["rows"][0]]))


def test_placeholders_must_match_each_image_not_just_the_total(tiny_model, tiny_batch):
    kw = {"pixel_values": tiny_batch["pixel_values"], "image_sizes": tiny_batch["image_sizes"]}
    rows = [list(r) for r in tiny_batch["rows"]]
    # move 3 placeholders of sample 1's first image to sample 0's: the total still matches
    first, other = rows[0].index(-1), rows[1].index(-1)
    rows[0][first:first] = [-1, -1, -1]
    del rows[1][other : other + 3]
    ids, _ = pad_rows(rows, "right")
    counts = tiny_batch["counts"]
    with pytest.raises(
        ValueError, match=f"sample 0: image 1 has {counts[0] + 3} placeholder.*{counts[0]}"
    ):
        tiny_model.embed_inputs(ids, **kw)
    # the right lengths but image 2's run labelled -1
    rows = [list(r) for r in tiny_batch["rows"]]
    rows[1] = [-1 if v == -2 else v for v in rows[1]]
    ids, _ = pad_rows(rows, "right")
    with pytest.raises(ValueError, match=r"sample 1: placeholder run 2 holds id -1, expected -2"):
        tiny_model.embed_inputs(ids, **kw)


@pytest.mark.parametrize("side", ["left"])
def test_generate_with_and_without_cache_and_per_sample(tiny_model, tiny_batch, side):
    ids, mask = pad_rows(tiny_batch["rows"], side)
    kw = {
        "pixel_values": tiny_batch["pixel_values"],
        "image_sizes": tiny_batch["image_sizes"],
        "max_new_tokens": 6,
        "do_sample": False,
        "eos_token_id": [2],
        "pad_token_id": 0,
    }
    with torch.no_grad():
        cached = tiny_model.generate(input_ids=ids, attention_mask=mask, **kw)[:, ids.shape[1] :]
        uncached = tiny_model.generate(input_ids=ids, attention_mask=mask, use_cache=False, **kw)[
            :, ids.shape[1] :
        ]
        singles = []
        for i, (start, stop) in enumerate(IMAGES_OF_SAMPLE):
            one = torch.tensor([tiny_batch["rows"][i]])
            kw_one = {
                **kw,
                "pixel_values": kw["pixel_values"][start:stop],
                "image_sizes": kw["image_sizes"][start:stop],
            }
            singles.append(tiny_model.generate(input_ids=one, **kw_one)[0, one.shape[1] :].tolist())
    assert torch.equal(cached, uncached)
    for i, single in enumerate(singles):
        produced = cached[i].tolist()[: len(single)]
        assert produced == single


def test_text_only_generation_continues_forward_argmax(tiny_model):
    ids = torch.tensor([[1, 5, 9, 33, 70]])
    with torch.no_grad():
        out = tiny_model.generate(
            input_ids=ids, max_new_tokens=3, do_sample=False, eos_token_id=None, pad_token_id=0
        )
        first = tiny_model(input_ids=ids).logits[0, -1].argmax()
    assert out[0, 5] == first


def test_loss_uses_internal_shift_and_ignore_index(tiny_model, tiny_batch):
    ids, mask = pad_rows(tiny_batch["rows"], "right")
    labels = ids.masked_fill((ids < 0) | (mask == 0), -100)
    kw = {"pixel_values": tiny_batch["pixel_values"], "image_sizes": tiny_batch["image_sizes"]}
    with torch.no_grad():
        out = tiny_model(input_ids=ids, attention_mask=mask, labels=labels, **kw)
    logits, target = out.logits[:, :-1], labels[:, 1:]
    keep = target != -100
    expected = torch.nn.functional.cross_entropy(logits[keep], target[keep])
    torch.testing.assert_close(out.loss, expected)


def test_vision_layers_after_layer_idx_are_not_computed(tiny_batch):
    model = build_tiny_phi3v(vocab_size=128, pad_token_id=0, eos_token_id=2)
    ids = torch.tensor([tiny_batch["rows"][0]])
    kw = {
        "pixel_values": tiny_batch["pixel_values"][:1],
        "image_sizes": tiny_batch["image_sizes"][:1],
    }
    layers = model.vision_tower.encoder.layers
    calls = {"used": 0, "last": 0, "post_layernorm": 0}
    layers[-2].register_forward_hook(lambda *_: calls.__setitem__("used", calls["used"] + 1))
    layers[-1].register_forward_hook(lambda *_: calls.__setitem__("last", calls["last"] + 1))
    model.vision_tower.post_layernorm.register_forward_hook(
        lambda *_: calls.__setitem__("post_layernorm", calls["post_layernorm"] + 1)
    )
    model(input_ids=ids, labels=ids.masked_fill(ids < 0, -100), **kw).loss.backward()
    assert calls == {"used": 1, "last": 0, "post_layernorm": 0}, "features of layer -2 only"
    last = layers[-1]
    assert all(p.grad is None for p in last.parameters())
    assert all(p.grad is None for p in model.vision_tower.post_layernorm.parameters())
    assert model.vision_tower.encoder.layers[0].self_attn.q_proj.weight.grad is not None
    assert (
        model.image_embedding.glb_GN.grad is not None
        and model.image_embedding.sub_GN.grad is not None
    )


def test_gradient_checkpointing_gives_the_same_loss_and_grads_keeping_fewer_activations(
    tiny_batch,
):
    ids, mask = pad_rows(tiny_batch["rows"], "right")
    labels = ids.masked_fill((ids < 0) | (mask == 0), -100)
    kw = {"pixel_values": tiny_batch["pixel_values"], "image_sizes": tiny_batch["image_sizes"]}
    results, kept = [], []
    for checkpointing in (False, True):
        model = build_tiny_phi3v(vocab_size=128, pad_token_id=0, eos_token_id=2).train()
        if checkpointing:  # renamed from gradient_checkpointing_enable in transformers 5.2x
            enable = getattr(model, "activation_checkpointing_enable", None)
            (enable or model.gradient_checkpointing_enable)()
        saved = [0]

        def pack(tensor, saved=saved):
            saved[0] += tensor.numel()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels, **kw).loss
        loss.backward()
        results.append((loss.detach(), model.image_embedding.sub_GN.grad.clone()))
        kept.append(saved[0])
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])
    # the checkpointed layers keep their inputs only, and recompute the rest in the backward
    assert kept[1] < 0.5 * kept[0], f"saved for backward: {kept[1]} vs {kept[0]} elements"


def test_components(tiny_model):
    seen = {}
    for name, _ in tiny_model.named_parameters():
        seen.setdefault(tiny_model.component_of(name), []).append(name)
    assert set(seen) == {"vision_tower", "projector", "language_model"}
    assert all(".img_processor." in n for n in seen["vision_tower"])
    assert sorted(n.rsplit(".", 1)[-1] for n in seen["projector"]).count("weight") == 2
    assert "model.vision_embed_tokens.glb_GN" in seen["projector"]
    assert "lm_head.weight" in seen["language_model"]
    assert (
        tiny_model.component_of(
            "base_model.model.model.vision_embed_tokens.img_projection.0.lora_A.default.weight"
        )
        == "projector"
    )
    assert type(tiny_model.vision_tower).__name__ == "CLIPVisionModel"


def test_eager_and_sdpa_agree(tiny_batch):
    ids, mask = pad_rows(tiny_batch["rows"], "left")
    kw = {"pixel_values": tiny_batch["pixel_values"], "image_sizes": tiny_batch["image_sizes"]}
    logits = []
    for impl in ("sdpa", "eager"):
        config = tiny_phi3v_config(
            vocab_size=128, pad_token_id=0, eos_token_id=2, attn_implementation=impl
        )
        model = build_tiny_phi3v(config)
        assert model.config._attn_implementation == impl
        with torch.no_grad():
            logits.append(model(input_ids=ids, attention_mask=mask, **kw).logits[mask.bool()])
    torch.testing.assert_close(logits[0], logits[1], atol=1e-5, rtol=1e-5)


def test_is_a_pretrained_model_with_generation():
    from transformers import GenerationMixin, PreTrainedModel

    assert issubclass(Phi3VForCausalLM, PreTrainedModel) and issubclass(
        Phi3VForCausalLM, GenerationMixin
    )


def test_wrong_crop_size_is_a_clear_error(tiny_model, tiny_batch):
    pixels = torch.zeros(1, 5, 3, 112, 112)
    with pytest.raises(ValueError, match="crop_size"):
        tiny_model(
            input_ids=torch.tensor([tiny_batch["rows"][0]]),
            pixel_values=pixels,
            image_sizes=tiny_batch["image_sizes"][:1],
        )


def test_ids_beyond_the_vocabulary_are_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match="vocab_size 128"):
        tiny_model(input_ids=torch.tensor([[1, 128]]))


@pytest.mark.slow
def test_cached_generation_matches_uncached_across_the_longrope_switch():
    """Crossing original_max_position_embeddings (4096) switches LongRoPE to its long factors:
    the cache built with the short ones must be dropped, or the cached logits drift."""
    model = build_tiny_phi3v(vocab_size=128, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    limit = model.config.original_max_position_embeddings
    ids = torch.randint(3, 128, (1, limit - 4), generator=torch.Generator().manual_seed(0))
    kw = {"max_new_tokens": 8, "do_sample": False, "eos_token_id": None, "pad_token_id": 0}
    kw |= {"output_logits": True, "return_dict_in_generate": True}
    with torch.no_grad():
        cached = model.generate(input_ids=ids, **kw)
        uncached = model.generate(input_ids=ids, use_cache=False, **kw)
    assert torch.equal(cached.sequences, uncached.sequences)
    for step, (a, b) in enumerate(zip(cached.logits, uncached.logits, strict=True)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=f"position {limit - 4 + step}")


def test_the_base_model_merges_the_images_and_language_model_is_the_decoder_alone(
    tiny_model, tiny_batch
):
    from transformers import Phi3Model

    ids, mask = pad_rows(tiny_batch["rows"], "right")
    kw = {"pixel_values": tiny_batch["pixel_values"], "image_sizes": tiny_batch["image_sizes"]}
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        hidden = tiny_model.model(input_ids=ids, attention_mask=mask, **kw).last_hidden_state
        logits = tiny_model(input_ids=ids, attention_mask=mask, **kw).logits
        other_images = {**kw, "pixel_values": kw["pixel_values"].flip(-1)}
        hidden_other = tiny_model.model(input_ids=ids, attention_mask=mask, **other_images)
        embeds = tiny_model.model.embed_inputs(ids, **kw)
        decoder = tiny_model.language_model
        alone = decoder(inputs_embeds=embeds, attention_mask=mask, position_ids=positions)
    torch.testing.assert_close(tiny_model.lm_head(hidden), logits, atol=0, rtol=0)
    assert not torch.allclose(hidden_other.last_hidden_state, hidden), "images reach the base model"
    torch.testing.assert_close(alone.last_hidden_state, hidden, atol=0, rtol=0)
    assert type(decoder) is Phi3Model
    decoder_params = {id(p) for p in decoder.parameters()}
    image_params = {id(p) for p in tiny_model.image_embedding.parameters()}
    assert decoder_params and not decoder_params & image_params
    everything = {id(p) for p in tiny_model.parameters()}
    assert decoder_params | image_params | {id(tiny_model.lm_head.weight)} == everything
    assert not any("_decoder" in name for name, _ in tiny_model.named_modules())


def test_language_model_follows_a_replaced_embedding_table():
    model = build_tiny_phi3v(vocab_size=128, pad_token_id=0, eos_token_id=2)
    table = torch.nn.Embedding(128, model.config.hidden_size)
    model.set_input_embeddings(table)
    assert model.language_model.embed_tokens is table is model.get_input_embeddings()
    model.train()
    assert model.language_model.training
    model.eval()
    assert not model.language_model.training
    twin = copy.deepcopy(model)  # the decoder of a copy runs over the copy's own modules
    assert twin.language_model.layers is twin.model.layers is not model.model.layers
    assert twin.language_model.embed_tokens is twin.get_input_embeddings()


def test_images_with_inputs_embeds_are_refused_not_dropped(tiny_model, tiny_batch):
    ids = torch.tensor([tiny_batch["rows"][0]])
    embeds = tiny_model.embed_inputs(
        ids, tiny_batch["pixel_values"][:1], tiny_batch["image_sizes"][:1]
    )
    with pytest.raises(ValueError, match="pixel_values given with inputs_embeds"):
        tiny_model(
            inputs_embeds=embeds,
            pixel_values=tiny_batch["pixel_values"][:1],
            image_sizes=tiny_batch["image_sizes"][:1],
        )


def test_configs_passed_in_are_never_changed(tmp_path):
    config = tiny_phi3v_config(vocab_size=128, pad_token_id=0, eos_token_id=2)
    before = copy.deepcopy(vars(config))
    model = build_tiny_phi3v(config)
    model.config.use_cache = False  # what training does to its model's config
    model.save_pretrained(tmp_path)
    loaded = Phi3VForCausalLM.from_pretrained(
        tmp_path, config=config, dtype="bfloat16", attn_implementation="eager"
    )
    assert vars(config) == before
    assert model.config is not config and loaded.config is not config
    assert loaded.config._attn_implementation == "eager" and loaded.dtype == torch.bfloat16


def test_peft_reads_checkpointing_state_without_a_deprecation_warning():
    import warnings

    peft = pytest.importorskip("peft")
    model = build_tiny_phi3v(vocab_size=128, pad_token_id=0, eos_token_id=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        assert model.is_gradient_checkpointing is False
        model.activation_checkpointing_enable()
        assert model.is_gradient_checkpointing is True
        peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["qkv_proj"]))
