"""The Qwen-VL family also serves Qwen2-VL checkpoints (``model_type`` ``qwen2_vl``): its own model
and processor classes, the same prompt, labels and image inputs as Qwen2.5-VL."""

from __future__ import annotations

import torch
from PIL import Image
from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from vlmtune.data.collator import VisionSFTCollator
from vlmtune.data.dataset import IGNORE_INDEX
from vlmtune.data.prompts import PromptTemplate
from vlmtune.inference.generate import generate_listings
from vlmtune.inference.loading import load_model_and_processor
from vlmtune.models.families import family_of_folder
from vlmtune.models.families.qwen2_5_vl import (
    QWEN_CHAT_TEMPLATE,
    QWEN_SPECIAL_TOKENS,
    Qwen2VLImageTextProcessor,
    train_tokenizer,
)


def _tiny_qwen2_vl(folder):
    texts = ["Product: Check Wool Scarf, Category: scarves, Full Price: 450"] * 20
    tokenizer = train_tokenizer(texts, 400)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": 448, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 4,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]},
            "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={"depth": 2, "embed_dim": 32, "hidden_size": 32, "num_heads": 4, "patch_size": 14},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )  # fmt: skip
    torch.manual_seed(0)
    Qwen2VLForConditionalGeneration(config).save_pretrained(folder)
    image_processor = Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=56 * 56)
    Qwen2VLImageTextProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=QWEN_CHAT_TEMPLATE
    ).save_pretrained(folder)
    return folder


def test_a_qwen2_vl_checkpoint_trains_and_generates_through_the_family(tmp_path):
    folder = _tiny_qwen2_vl(tmp_path / "qwen2-vl")
    assert family_of_folder(folder).name == "qwen2_5_vl"
    model, processor = load_model_and_processor(folder, dtype=torch.float32, device="cpu")
    assert type(model) is Qwen2VLForConditionalGeneration
    assert type(processor) is Qwen2VLImageTextProcessor
    template = PromptTemplate()
    prompt = template.prompt(processor)
    assert prompt.endswith("<|im_start|>assistant\n") and "<|image_pad|>" in prompt
    image = Image.new("RGB", (70, 84), (180, 40, 40))
    inputs = processor(text=[prompt], images=[[image]], return_tensors="pt")
    answer = processor.tokenizer("Product: x<|im_end|>", add_special_tokens=False)["input_ids"]
    n = inputs["input_ids"].shape[1]
    example = {
        "input_ids": torch.cat([inputs["input_ids"][0], torch.tensor(answer)]),
        "labels": torch.cat([torch.full((n,), IGNORE_INDEX), torch.tensor(answer)]),
        "mm_token_type_ids": torch.cat([inputs["mm_token_type_ids"][0], torch.zeros(len(answer))]),
        **{key: inputs[key] for key in processor.image_input_keys},
    }
    collator = VisionSFTCollator(
        processor.tokenizer.pad_token_id, token_keys=processor.token_input_keys
    )
    batch = collator([{**example, "sample_id": "a", "image_path": "a"}] * 2)
    batch = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    assert int(
        processor.image_token_mask(batch["input_ids"][0]).sum()
    ) == processor.num_image_tokens(image)
    loss = model.train()(**batch).loss
    loss.backward()
    assert torch.isfinite(loss) and model.lm_head.weight.grad.abs().sum() > 0
    texts = generate_listings(model.eval(), processor, [image, image], template)
    assert len(texts) == 2 and texts[0] == texts[1]
