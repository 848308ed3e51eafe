"""Phi3VImageProcessor: golden parity (21 cases + one full tensor), geometry and errors."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import golden_image, random_image
from PIL import Image

from vlmtune.models.phi3v import Phi3VImageProcessor
from vlmtune.models.phi3v.image_processing_phi3v import hd_geometry


def _cases(golden):
    return json.loads((golden / "processor.json").read_text())["cases"]


def test_golden_processor_cases(golden):
    cases = _cases(golden)
    assert len(cases) == 21
    for case in cases:
        label = f"{case['image']} num_crops={case['num_crops']}"
        processor = Phi3VImageProcessor(num_crops=case["num_crops"])
        out = processor(golden_image(golden, case["image"]), return_tensors="pt")
        pixels = out["pixel_values"]
        assert list(pixels.shape) == case["pixel_values_shape"], label
        assert out["image_sizes"][0].tolist() == case["image_sizes"], label
        assert int(out["num_img_tokens"][0]) == case["num_img_tokens"], label
        probes = pixels.flatten()[torch.tensor(case["probe_index"])]
        torch.testing.assert_close(
            probes, torch.tensor(case["probe_values"]), atol=1e-4, rtol=0, msg=label
        )
        crops = pixels[0].double()
        for got, want in zip(crops.sum((1, 2, 3)).tolist(), case["crop_sums"], strict=True):
            assert got == pytest.approx(want, rel=1e-6), label
        for got, want in zip(
            crops.abs().sum((1, 2, 3)).tolist(), case["crop_abs_sums"], strict=True
        ):
            assert got == pytest.approx(want, rel=1e-6), label


def test_golden_full_tensor(golden):
    from safetensors.torch import load_file

    want = load_file(golden / "processor_tensors.safetensors")["pixel_values_img1_crops4"]
    got = Phi3VImageProcessor(num_crops=4)(golden_image(golden, "img1_400x300.png"))[
        "pixel_values"
    ][0]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_token_count_without_pixels_matches(golden):
    processor = Phi3VImageProcessor(num_crops=16)
    for case in _cases(golden):
        image = golden_image(golden, case["image"])
        assert processor.num_image_tokens(image, case["num_crops"]) == case["num_img_tokens"]


def test_portrait_is_transposed_and_padded_white():
    geo = hd_geometry(1000, 1300, num_crops=4)
    assert geo.transposed and (geo.height, geo.width) == (672, 672)
    assert (geo.resized_w, geo.resized_h) == (672, 516)
    out = Phi3VImageProcessor(num_crops=4)(Image.new("RGB", (1000, 1300), (0, 0, 0)))
    crop = out["pixel_values"][0, 1]  # top-left crop: padding is on the left of the portrait
    white = (1.0 - torch.tensor([0.48145466, 0.4578275, 0.40821073])) / torch.tensor(
        [0.26862954, 0.26130258, 0.27577711]
    )
    torch.testing.assert_close(crop[:, :, 0], white[:, None].expand(3, 336))


def test_tiny_crop_size_layout():
    processor = Phi3VImageProcessor(num_crops=4, crop_size=56)
    out = processor([random_image(80, 60), random_image(40, 200)])
    assert out["pixel_values"].shape == (2, 5, 3, 56, 56)
    assert out["image_sizes"].tolist() == [[112, 112], [56, 224]]
    # crops beyond the grid are zero; tokens: (h*w+1)*4 + 1 + (h+1)*2 for a 2x2-merged 4x4 patch grid
    assert torch.count_nonzero(out["pixel_values"][1, 5:]) == 0
    assert out["num_img_tokens"].tolist() == [(4 + 1) * 4 + 1 + 3 * 2, (4 + 1) * 4 + 1 + 2 * 2]


@pytest.mark.parametrize(("width", "height"), [(224, 280), (300, 200), (112, 112), (90, 400)])
def test_single_crop_global_view_is_the_bicubic_of_the_crop(width, height):
    # one crop: the global view is bicubic(hd, S x S) of an S x S image; the processor copies it
    processor = Phi3VImageProcessor(num_crops=1, crop_size=112)
    out = processor(random_image(height, width, seed=width))["pixel_values"][0]
    expected = torch.nn.functional.interpolate(out[1][None], size=(112, 112), mode="bicubic")[0]
    assert torch.equal(out[0], expected)


def test_non_rgb_is_converted():
    processor = Phi3VImageProcessor(num_crops=1, crop_size=56)
    gray = random_image(60, 60).convert("L")
    rgb = gray.convert("RGB")
    torch.testing.assert_close(processor(gray)["pixel_values"], processor(rgb)["pixel_values"])


def test_transparency_is_composited_onto_white():
    processor = Phi3VImageProcessor(num_crops=1, crop_size=56)
    clear = Image.new("RGBA", (60, 40), (0, 0, 0, 0))
    white = Image.new("RGB", (60, 40), (255, 255, 255))
    torch.testing.assert_close(processor(clear)["pixel_values"], processor(white)["pixel_values"])
    keyed = Image.new("P", (60, 40), 0)
    keyed.info["transparency"] = 0
    torch.testing.assert_close(processor(keyed)["pixel_values"], processor(white)["pixel_values"])


def test_errors_are_clear():
    with pytest.raises(ValueError, match="even"):
        Phi3VImageProcessor(crop_size=42, patch_size=14)
    with pytest.raises(ValueError, match="num_crops"):
        Phi3VImageProcessor(num_crops=0)
    with pytest.raises(ValueError, match=r"image of 2000x1 \(width x height\) is too elongated"):
        Phi3VImageProcessor(num_crops=1)(Image.new("RGB", (2000, 1)))
    with pytest.raises(ValueError, match=r"image of 1x2000 \(width x height\).*resize it to 0x336"):
        Phi3VImageProcessor(num_crops=1)(Image.new("RGB", (1, 2000)))
    with pytest.raises(TypeError, match="PIL"):
        Phi3VImageProcessor()([torch.zeros(3, 4, 4)])


def test_save_and_reload_keeps_settings(tmp_path):
    Phi3VImageProcessor(num_crops=7, crop_size=112).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["num_crops"] == 7 and saved["crop_size"] == 112
    again = Phi3VImageProcessor.from_pretrained(tmp_path)
    assert (again.num_crops, again.crop_size, again.num_img_tokens) == (7, 112, 16)
