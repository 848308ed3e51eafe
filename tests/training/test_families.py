"""Every model family through the whole pipeline on a tiny random model: its own classes load what
init-model wrote, the labels are its chat template's, and train (LoRA, full, frozen vision,
resume), eval, predict, merge and serve work for it."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    Gemma3ForConditionalGeneration,
    Idefics3ForConditionalGeneration,
    Qwen2_5_VLForConditionalGeneration,
)

from live_server import live_server
from tiny_model import tiny_overrides
from vlmtune.cli.main import main
from vlmtune.data.collator import VisionSFTCollator
from vlmtune.data.dataset import IGNORE_INDEX, VisionSFTDataset
from vlmtune.data.prepared import load_prepared
from vlmtune.data.prompts import PromptTemplate
from vlmtune.evaluation.args import EvalArgs, PredictArgs
from vlmtune.evaluation.predict import run_predict
from vlmtune.evaluation.run import run_eval
from vlmtune.inference.args import GenerationArgs, InferenceArgs
from vlmtune.inference.listing_schema import resolve_schema
from vlmtune.inference.loading import check_model, load_model_and_processor
from vlmtune.models.families import FAMILIES, UnknownFamilyError, family_of_folder
from vlmtune.models.folder import ModelFolderError
from vlmtune.models.phi3v import Phi3VForCausalLM
from vlmtune.serving.app import create_app
from vlmtune.serving.args import ServeArgs
from vlmtune.serving.server import build_state
from vlmtune.training.args import LoraArgs, ModelArgs, TrainArgs, TrainConfig
from vlmtune.training.build import build_model, load_processor
from vlmtune.training.merge import merge_adapter
from vlmtune.training.train import train
from vlmtune.utils.config import ConfigError, load_config

OWN_CLASSES = {
    "phi3v": Phi3VForCausalLM,
    "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration,
    "smolvlm": Idefics3ForConditionalGeneration,
    "gemma3": Gemma3ForConditionalGeneration,
}
"""The class each family's checkpoints load with, outside vlmtune's pipeline."""
SPECIAL = {
    "phi3v": ("<|user|>", "<|end|>"),
    "qwen2_5_vl": ("<|im_start|>", "<|image_pad|>"),
    "smolvlm": ("<end_of_utterance>", "<fake_token_around_image>"),
    "gemma3": ("<start_of_turn>", "<image_soft_token>"),
}


def _conversation(family: str, question: str, answer: str) -> list[dict]:
    """The user's image and question and the assistant's answer, in the content form the
    family's chat template reads."""
    if family == "phi3v":
        return [
            {"role": "user", "content": f"<|image_1|>\n{question}"},
            {"role": "assistant", "content": answer},
        ]
    return [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    ]


def test_the_checkpoint_loads_with_the_familys_own_classes(family_inputs):
    name, inputs = family_inputs
    assert family_of_folder(inputs.checkpoint).name == name
    model = OWN_CLASSES[name].from_pretrained(str(inputs.checkpoint))
    assert type(model) is OWN_CLASSES[name]
    processor = FAMILIES[name].load_processor(inputs.checkpoint)
    vocab = processor.tokenizer.get_vocab()
    assert all(token in vocab for token in SPECIAL[name]), "the family's special tokens"
    assert processor.end_token in vocab
    assert model.get_input_embeddings().num_embeddings >= len(processor.tokenizer)


def test_every_tiny_model_starts_at_the_tiny_phi3v_weight_scale(family_inputs):
    """Families compared on the demo start alike: every weight matrix of a tiny model, in the
    vision tower, projector and decoder, is drawn at the tiny Phi-3-V's scale (std 0.08), not at
    transformers' 0.02 (Gemma 3's SigLIP keeps its own, wider initialisation; its projector
    starts at zero)."""
    name, inputs = family_inputs
    model = OWN_CLASSES[name].from_pretrained(str(inputs.checkpoint))
    stds = {
        n: float(p.detach().std())
        for n, p in model.named_parameters()
        if p.ndim >= 2
        and not n.endswith("_GN")  # Phi-3-V's image separators
        and "vision_tower" not in n
        and "mm_input_projection" not in n
    }
    assert any("embed_tokens" in n for n in stds) and len(stds) > 10
    assert all(0.07 < std < 0.09 for std in stds.values()), {
        n: round(s, 3) for n, s in stds.items() if not 0.07 < s < 0.09
    }


def test_ids_are_the_chat_templates_and_only_the_answer_and_end_token_train(family_inputs):
    name, inputs = family_inputs
    processor = FAMILIES[name].load_processor(inputs.checkpoint)
    template = PromptTemplate()
    dataset = VisionSFTDataset(load_prepared(inputs.data, "train"), processor, template, 4096)
    example = dataset[0]
    image = Image.open(dataset.image_path(0)).convert("RGB")
    prefix = getattr(processor, "answer_prefix", "")
    answer = dataset.answer(0).removesuffix(processor.end_token).removeprefix(prefix)
    conversation = _conversation(name, template.args.question, answer)
    text = processor.apply_chat_template(conversation, tokenize=False)
    reference = processor(text=[text], images=[[image]], return_tensors="pt")["input_ids"][0]
    ids, labels = example["input_ids"], example["labels"]
    # the template closes the turn with the end token and a newline, which nothing is trained on
    assert reference[: len(ids)].tolist() == ids.tolist()
    assert processor.tokenizer.decode(reference[len(ids) :]) == "\n"
    trained = (labels != IGNORE_INDEX).nonzero().flatten().tolist()
    assert trained == list(range(len(ids) - len(trained), len(ids))), "one span, at the end"
    target = processor.tokenizer.decode(labels[trained])
    assert target == prefix + answer + processor.end_token
    assert labels[trained].tolist() == ids[trained].tolist()
    assert not processor.image_token_mask(ids[trained]).any()
    assert dataset.token_counts()["image_tokens"][0] == int(processor.image_token_mask(ids).sum())
    assert dataset.token_counts()["length"][0] == len(ids)


def test_an_unknown_model_type_lists_the_supported_ones(tmp_path, tiny_inputs):
    folder = tmp_path / "llava"
    folder.mkdir()
    for item in tiny_inputs.checkpoint.iterdir():
        if item.is_file():
            (folder / item.name).write_bytes(item.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "llava"}))
    with pytest.raises(
        UnknownFamilyError, match="'llava'.*supported model types: gemma3, phi3_v, qwen2.*idefics3$"
    ):
        family_of_folder(folder)
    with pytest.raises(ModelFolderError, match=r"^--model .*'llava'.*phi3_v") as err:
        check_model(folder)
    assert "\n" not in str(err.value)


def test_modes_train_the_familys_parts(family_inputs):
    name, inputs = family_inputs
    family = FAMILIES[name]
    model_args = ModelArgs(path=inputs.checkpoint)
    frozen = build_model(model_args, TrainArgs(mode="frozen_vision"), LoraArgs())
    for param_name, param in frozen.named_parameters():
        in_tower = param_name.startswith(family.vision_modules)
        assert param.requires_grad != in_tower, param_name
        assert (family.component_of(param_name) == "vision_tower") == in_tower, param_name
    assert any(n.startswith(family.vision_modules) for n, _ in frozen.named_parameters())
    lora = build_model(model_args, TrainArgs(mode="lora"), LoraArgs())
    adapted = {n.split(".lora_A")[0] for n, _ in lora.named_parameters() if ".lora_A" in n}
    leaves = {n.rsplit(".", 1)[-1] for n in adapted}
    assert leaves == set(family.default_lora_targets["language_model"])
    assert all(family.component_of(n) == "language_model" for n in adapted)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    adapter = folder / "adapter_model.safetensors"
    return load_file(str(adapter if adapter.is_file() else folder / "model.safetensors"))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["lora", "full"])
def test_training_resumes_exactly(family_inputs, tmp_path, mode):
    name, inputs = family_inputs
    one = train(inputs.config(tmp_path / "one", mode=mode, max_steps=4, save_steps=2))
    two = tmp_path / "two"
    train(inputs.config(two, mode=mode, max_steps=2, save_steps=2))
    resumed = train(inputs.config(two, mode=mode, max_steps=4, save_steps=2, resume="auto"))
    assert one.summary["global_step"] == resumed.summary["global_step"] == 4
    a, b, start = _weights(one.model_dir), _weights(two / "model"), _weights(two / "checkpoint-2")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0, msg=key)
    assert any(not torch.allclose(start[k], a[k]) for k in a), "training moved the weights"
    if mode == "full":  # the run's model is a checkpoint of the family's own layout
        assert type(OWN_CLASSES[name].from_pretrained(str(one.model_dir))) is OWN_CLASSES[name]


@pytest.mark.slow
def test_eval_predict_and_merge(family_inputs, tmp_path):
    name, inputs = family_inputs
    run = tmp_path / "run"
    config = inputs.config(
        run, mode="lora", max_steps=2, save_steps=2, learning_rate=5e-3, report_to="tensorboard"
    )
    config.lora = LoraArgs(vision_tower=["all"], dropout=0.0)
    train(config)
    assert list((run / "tensorboard").rglob("events.out.tfevents.*")), "the tracker's log"
    generation = GenerationArgs(max_new_tokens=8, batch_size=2)
    inference = InferenceArgs(model=run, generation=generation)
    result = run_eval(EvalArgs(inference=inference, data=inputs.data, split="val", limit=3))
    assert len(result.predictions) == 3 and "parse_rate" in result.metrics
    assert (result.out / "report.html").is_file()
    photos = [load_prepared(inputs.data, "test").root / p for p in
              load_prepared(inputs.data, "test").frame["local_image_path"][:2]]  # fmt: skip
    predicted = run_predict(
        PredictArgs(inference=inference, inputs=photos, out=tmp_path / "listings.csv")
    )
    assert len(predicted.rows) == 2 and not predicted.failures
    # constrained decoding (the listing schema train saved) holds for every family's tokenizer
    forced = GenerationArgs(max_new_tokens=8, batch_size=2, constrained=True)
    constrained = InferenceArgs(model=run, generation=forced)
    out = tmp_path / "constrained.csv"
    (row,) = run_predict(PredictArgs(inference=constrained, inputs=photos[:1], out=out)).rows
    assert row["raw_text"].startswith("Product: ") and row["error"] is None, row
    assert ", Category: " in row["raw_text"] and ", Full Price: " in row["raw_text"]

    merged_dir = merge_adapter(run, tmp_path / "merged")
    merged = OWN_CLASSES[name].from_pretrained(str(merged_dir)).eval()
    adapted, processor = load_model_and_processor(run, dtype=torch.float32, device="cpu")
    assert type(FAMILIES[name].load_processor(merged_dir)) is type(processor)
    dataset = VisionSFTDataset(load_prepared(inputs.data, "val"), processor, PromptTemplate(), 4096)
    collator = VisionSFTCollator(
        processor.tokenizer.pad_token_id, token_keys=processor.token_input_keys
    )
    batch = collator([dataset[i] for i in range(2)])
    batch = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor) and k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, adapted(**batch).logits)
    base = FAMILIES[name].load_model(inputs.checkpoint, torch.float32)
    with torch.no_grad():
        assert not torch.allclose(base(**batch).logits, merged(**batch).logits), "LoRA changed it"
    assert load_processor(ModelArgs(path=merged_dir)).end_token == processor.end_token
    _serves_a_listing(run, adapted, processor, photos[0])


def _serves_a_listing(run: Path, model: torch.nn.Module, processor, photo: Path) -> None:
    """``vlmtune serve``'s app on a real server on 127.0.0.1: a photo uploaded to
    ``/v1/listings`` comes back as a listing (constrained by the schema train saved)."""
    args = ServeArgs(model=run, port=0, max_batch=2)
    schema = resolve_schema(check_model(run).model_dir)
    state = build_state(args, model, processor, "run", schema)
    state.batcher.start()
    try:
        with live_server(create_app(state)) as url:
            files = [("images", (photo.name, photo.read_bytes(), "image/jpeg"))]
            answer = httpx.post(f"{url}/v1/listings", files=files, timeout=120)
    finally:
        state.batcher.close(10)
    assert answer.status_code == 200, answer.text
    (listing,) = answer.json()["listings"]
    assert listing["raw_text"].startswith("Product: "), listing


def test_init_model_cli_builds_each_family_and_names_the_known_ones(tiny_inputs, tmp_path, capsys):
    for name in sorted(FAMILIES):
        out = tmp_path / name
        words = ["init-model", "--data", str(tiny_inputs.data), "--out", str(out)]
        assert main([*words, "--tiny", "--family", name, *tiny_overrides(vocab_size=400)]) == 0
        assert family_of_folder(out).name == name
    capsys.readouterr()
    refused = ["init-model", "--data", str(tiny_inputs.data), "--out", str(tmp_path / "real")]
    assert main([*refused, "--no-tiny", "--family", "qwen2_5_vl"]) == 2
    assert "hf download" in capsys.readouterr().err
    assert not (tmp_path / "real").exists()
    bad = ["init-model", "--data", str(tiny_inputs.data), "--out", str(tmp_path / "x")]
    assert main([*bad, "--family", "llava"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        "'llava'" in err
        and "gemma3, phi3v, qwen2_5_vl, smolvlm" in err
        and len(err.splitlines()) == 1
    )
    assert not (tmp_path / "x").exists()


def test_images_with_different_tile_counts_batch_together(tmp_path, tiny_inputs):
    """SmolVLM splits a large image into tiles: the collator pads the tile axis with empty
    tiles (zeros), which the model drops, so a batch gives each row its own loss."""
    folder = tmp_path / "smolvlm"
    assert main(["init-model", "--data", str(tiny_inputs.data), "--out", str(folder),
                 "--family", "smolvlm", *tiny_overrides(vocab_size=400)]) == 0  # fmt: skip
    family = FAMILIES["smolvlm"]
    processor = family.load_processor(folder)
    assert processor.image_processor.do_image_splitting  # as the real checkpoints
    processor.image_processor.size = {"longest_edge": 112}  # 56 px tiles of images at 112 px
    model = family.load_model(folder, torch.float32)
    template = PromptTemplate()
    images = [Image.new("RGB", (112, 56), "red"), Image.new("RGB", (112, 112), "blue")]
    prompt = template.prompt(processor)
    examples = []
    for image in images:
        inputs = processor(text=[prompt], images=[[image]], return_tensors="pt")
        examples.append({
            "input_ids": inputs["input_ids"][0], "labels": inputs["input_ids"][0],
            "pixel_values": inputs["pixel_values"],
            "pixel_attention_mask": inputs["pixel_attention_mask"],
            "sample_id": "x", "image_path": "x",
        })  # fmt: skip
    tiles = [ex["pixel_values"].shape[1] for ex in examples]
    assert tiles[0] < tiles[1], tiles
    batch = VisionSFTCollator(processor.tokenizer.pad_token_id)(examples)
    assert batch["pixel_values"].shape[:2] == (2, tiles[1])
    assert not batch["pixel_values"][0, tiles[0] :].any()
    keys = ("input_ids", "attention_mask", "pixel_values", "pixel_attention_mask")
    with torch.no_grad():
        together = model(**{k: batch[k] for k in keys}).logits
        for row, example in enumerate(examples):
            alone = VisionSFTCollator(processor.tokenizer.pad_token_id)([example])
            logits = model(**{k: alone[k] for k in keys}).logits[0]
            n = logits.shape[0]
            torch.testing.assert_close(together[row, :n], logits, atol=1e-4, rtol=1e-4)


def test_the_fixture_covers_every_family(request):
    params = request.session._fixturemanager.getfixturedefs("family_inputs", request.node)[0].params
    assert sorted(params) == sorted(FAMILIES)


def test_packing_is_refused_where_the_model_computes_its_own_positions(family_inputs, tmp_path):
    name, inputs = family_inputs
    if FAMILIES[name].supports_packing:
        pytest.skip(f"{name} takes packed position ids (tests/training/test_packing.py)")
    config = inputs.config(tmp_path / "run", per_device_batch_size=1, max_steps=1)
    config.data.packing = True
    config.data.group_by_length = False
    with pytest.raises(ConfigError, match=rf"data.packing=true: {name} computes its own position"):
        train(config)
    assert not list((tmp_path / "run").glob("checkpoint-*"))


def test_max_image_pixels_sizes_the_images_where_the_family_has_a_pixel_budget(
    family_inputs, tmp_path
):
    """``model.max_image_pixels`` is Qwen's ``max_pixels`` and SmolVLM's longest edge in whole
    tiles; the trained model's processor keeps it. Phi-3-V (num_crops) and Gemma 3 (one fixed
    size) refuse it before training, naming their own knob."""
    name, inputs = family_inputs
    config = inputs.config(tmp_path / "run", mode="lora", max_steps=1, save_steps=1)
    config.model.max_image_pixels = 112 * 140
    if name in ("phi3v", "gemma3"):
        knob = "num_crops" if name == "phi3v" else "one size"
        with pytest.raises(ConfigError, match=rf"max_image_pixels=15680: .*{knob}"):
            train(config)
        assert not list((tmp_path / "run").glob("checkpoint-*"))
        return
    image = Image.open(next((inputs.data / "images").iterdir())).convert("RGB")  # 112x140
    base = FAMILIES[name].load_processor(inputs.checkpoint)
    trained = FAMILIES[name].load_processor(train(config).model_dir)
    if name == "qwen2_5_vl":  # the whole photo: 4 x 5 merged 28 px patches
        assert base.num_image_tokens(image) < trained.num_image_tokens(image) == 20
    else:  # SmolVLM: 112 px = 2 tiles of 56 px, the longest edge whose square fits 15,680 pixels
        assert base.image_processor.size.longest_edge == 56
        assert trained.image_processor.size.longest_edge == 112
        assert trained.num_image_tokens(image) > base.num_image_tokens(image)  # tiles + global


@pytest.mark.slow
def test_the_familys_gpu_recipe_runs_on_its_tiny_model(family_inputs, tmp_path):
    """``configs/FAMILY_lora.yaml`` (``lora.yaml`` for Phi-3-V) loads and trains on the family's
    tiny model as a GPU user would start it (gradient checkpointing, LoRA), and the model keeps
    the image size it trained at."""
    name, inputs = family_inputs
    configs = resources.files("vlmtune") / "configs"
    own = configs / f"{name}_lora.yaml"
    recipe = own if own.is_file() else configs / "lora.yaml"
    assert own.is_file() or name == "phi3v", f"{name} has no recipe of its own"
    run = tmp_path / "run"
    overrides = [
        f"model.path={inputs.checkpoint}", f"data.path={inputs.data}", f"train.output_dir={run}",
        "train.max_steps=2", "train.per_device_batch_size=2",
        "train.grad_accum=1", "train.eval_steps=2", "train.save_steps=2",
        "train.metric_for_best=eval_loss", "train.report_to=none", "train.dataloader_workers=0",
        "data.eval_limit=4",
    ]  # fmt: skip
    with resources.as_file(recipe) as path:
        if load_config(TrainConfig, path, overrides).model.max_image_pixels is not None:
            # the recipe's budget in the tiny model's 56 px tiles would be 20 tiles a side
            overrides.append(f"model.max_image_pixels={112 * 112}")
        config = load_config(TrainConfig, path, overrides)
    result = train(config)
    assert result.summary["global_step"] == 2 and result.model_dir is not None
    pixels = config.model.max_image_pixels
    if pixels is not None:  # the model keeps the recipe's image size
        size = FAMILIES[name].load_processor(result.model_dir).image_processor.size
        base = FAMILIES[name].load_processor(inputs.checkpoint).image_processor.size
        assert base.longest_edge < size.longest_edge <= pixels
