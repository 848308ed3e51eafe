"""Phi3VProcessor: golden input_ids, batching and padding, tag checks, save/load."""

from __future__ import annotations

import pytest
import torch
from conftest import golden_image

from vlmtune.models.phi3v import Phi3VProcessor

PROMPTS = ("one_image_crops4", "one_image_crops16", "two_images", "text_only")


@pytest.fixture(scope="module")
def processor(golden):
    return Phi3VProcessor.from_pretrained(golden / "checkpoint", num_crops=4)


@pytest.mark.parametrize("name", PROMPTS)
def test_golden_input_ids(golden, golden_cases, golden_tensors, name):
    case = golden_cases[name]
    processor = Phi3VProcessor.from_pretrained(golden / "checkpoint", num_crops=case["num_crops"])
    images = [golden_image(golden, f) for f in case["images"]]
    out = processor(text=case["text"], images=images or None)
    assert torch.equal(out["input_ids"][0], golden_tensors[f"{name}.input_ids"])
    assert out["attention_mask"].tolist() == [[1] * case["seq_len"]]
    if images:
        assert out["image_sizes"].tolist() == case["image_sizes"]
        assert out["pixel_values"].shape == (len(images), case["num_crops"] + 1, 3, 336, 336)
        assert int((out["input_ids"] < 0).sum()) == case["num_image_placeholders"]
    else:
        assert "pixel_values" not in out


def test_tokenizer_is_the_named_class(processor):
    assert type(processor.tokenizer).__name__ == "LlamaTokenizer"
    # the generic backend would give an extra "▁" (29871) after <|user|>; the named class does not
    assert processor.tokenizer("<|user|>\nhi").input_ids[:3] == [1, 32010, 13]


@pytest.mark.parametrize("side", ["left", "right"])
def test_batch_padding_and_image_order(golden, golden_cases, golden_tensors, processor, side):
    texts = [golden_cases["text_only"]["text"], golden_cases["two_images"]["text"]]
    images = [
        [],
        [golden_image(golden, "img2_336x336.png"), golden_image(golden, "img3_1344x200.png")],
    ]
    out = processor(text=texts, images=images, padding_side=side)
    ids, mask = out["input_ids"], out["attention_mask"]
    short = golden_tensors["text_only.input_ids"]
    long = golden_tensors["two_images.input_ids"]
    assert ids.shape == (2, long.numel())
    assert torch.equal(ids[1], long) and mask[1].all()
    real = ids[0][mask[0].bool()]
    assert torch.equal(real, short)
    pad = ids[0][~mask[0].bool()]
    assert (
        pad == processor.tokenizer.pad_token_id
    ).all() and pad.numel() == long.numel() - short.numel()
    first_real = int(mask[0].nonzero()[0])
    assert first_real == (long.numel() - short.numel() if side == "left" else 0)
    assert out["pixel_values"].shape[0] == 2
    assert out["image_sizes"].tolist() == golden_cases["two_images"]["image_sizes"]


def test_images_flattened_across_batch_in_order(golden, processor):
    a, b, c = (
        golden_image(golden, n) for n in ("img2_336x336.png", "img3_1344x200.png", "img4_50x70.png")
    )
    text = "<|user|>\n<|image_1|>\nx<|end|>"
    out = processor(text=[text, "<|image_1|><|image_2|>y"], images=[[a], [b, c]])
    single = [processor(text=text, images=[img]) for img in (a, b, c)]
    for i, one in enumerate(single):
        torch.testing.assert_close(out["pixel_values"][i], one["pixel_values"][0])
        assert out["image_sizes"][i].tolist() == one["image_sizes"][0].tolist()
    row = out["input_ids"][1]
    assert row[row < 0].unique().tolist() == [-2, -1]


def test_num_image_tokens_helper(golden, processor):
    image = golden_image(golden, "img0_1000x1300.png")
    out = processor(text="<|image_1|>", images=[image])
    assert processor.num_image_tokens(image) == int((out["input_ids"] < 0).sum())


@pytest.mark.parametrize(
    ("text", "count", "match"),
    [
        ("<|image_2|> x", 1, "image_2"),  # does not start at 1
        ("<|image_1|> <|image_3|>", 2, "image_3"),  # gap
        ("<|image_2|> <|image_1|>", 2, "in order"),  # out of order
        ("<|image_1|> <|image_1|>", 1, "once each"),  # duplicate
        ("<|image_1|>", 2, "2 image"),  # more images than tags
        ("no tags", 1, "1 image"),  # images without tags
    ],
)
def test_bad_image_tags_raise(golden, processor, text, count, match):
    images = [golden_image(golden, "img2_336x336.png")] * count
    with pytest.raises(ValueError, match=match):
        processor(text=text, images=images)


def test_tags_without_images_raise(processor):
    with pytest.raises(ValueError, match="0 image"):
        processor(text="<|image_1|> what?")


def test_batch_needs_one_image_list_per_text(golden, processor):
    image = golden_image(golden, "img2_336x336.png")
    with pytest.raises(ValueError, match="one image list per text"):
        processor(text=["<|image_1|>", "<|image_1|>"], images=[[image]])
    with pytest.raises(ValueError, match="list of PIL images"):
        processor(text=["<|image_1|>", "<|image_1|>"], images=[image, image])


def test_save_and_reload(tmp_path, golden, processor):
    processor.save_pretrained(tmp_path)
    again = Phi3VProcessor.from_pretrained(tmp_path)
    assert again.image_processor.num_crops == 4
    text = "<|user|>\n<|image_1|>\nWhat?<|end|>\n<|assistant|>\n"
    image = golden_image(golden, "img1_400x300.png")
    assert torch.equal(
        again(text=text, images=[image])["input_ids"],
        processor(text=text, images=[image])["input_ids"],
    )
    assert again.decode([32010, 13, 5618]) == processor.decode([32010, 13, 5618])


def test_tiny_processor_feeds_tiny_model_end_to_end(golden, tiny_model):
    from vlmtune.models.phi3v import Phi3VImageProcessor

    tokenizer = Phi3VProcessor.from_pretrained(golden / "checkpoint").tokenizer
    processor = Phi3VProcessor(Phi3VImageProcessor(num_crops=4, crop_size=56), tokenizer)
    a, b = golden_image(golden, "img0_1000x1300.png"), golden_image(golden, "img3_1344x200.png")
    texts = [
        "<|user|>\n<|image_1|>\nTitle?<|end|>\n<|assistant|>\n",
        "<|user|>\n<|image_1|><|image_2|>\nBoth?<|end|>\n<|assistant|>\n",
    ]
    out = processor(text=texts, images=[[a], [a, b]], padding_side="left")
    ids = (
        out["input_ids"].remainder(128).where(out["input_ids"] >= 0, out["input_ids"])
    )  # tiny vocab
    with torch.no_grad():
        logits = tiny_model(
            input_ids=ids,
            attention_mask=out["attention_mask"],
            pixel_values=out["pixel_values"],
            image_sizes=out["image_sizes"],
        ).logits
        generated = tiny_model.generate(
            input_ids=ids,
            attention_mask=out["attention_mask"],
            pixel_values=out["pixel_values"],
            image_sizes=out["image_sizes"],
            max_new_tokens=3,
            do_sample=False,
            pad_token_id=0,
        )
    assert logits.shape[:2] == ids.shape and torch.isfinite(logits).all()
    assert generated.shape == (2, ids.shape[1] + 3)
