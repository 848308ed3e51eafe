"""evaluate_model / run_eval / make_generation_eval end to end on tiny models with known outputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from eval_fixtures import LISTING, EvalInputs

from vlmtune.data.prepared import load_prepared
from vlmtune.data.prompts import PromptTemplate
from vlmtune.evaluation.args import EvalArgs
from vlmtune.evaluation.evaluate import EvalError, evaluate_model, make_generation_eval
from vlmtune.evaluation.run import run_eval
from vlmtune.inference.args import GenerationArgs, InferenceArgs
from vlmtune.models.phi3v import Phi3VForCausalLM, Phi3VProcessor

GEN = GenerationArgs(max_new_tokens=40, batch_size=3)


def _listing(inputs: EvalInputs) -> tuple[Phi3VForCausalLM, Phi3VProcessor]:
    return Phi3VForCausalLM.from_pretrained(inputs.listing_model), Phi3VProcessor.from_pretrained(
        inputs.listing_model
    )


def test_evaluate_model_scores_a_known_answer(eval_inputs: EvalInputs):
    model, processor = _listing(eval_inputs)
    test = load_prepared(eval_inputs.data, "test")
    train = load_prepared(eval_inputs.data, "train")
    result = evaluate_model(model, processor, test, PromptTemplate(), GEN, train=train)
    m = result.metrics
    # the model answers "Check Wool Scarf / scarves / 450" for all four test rows (see ROWS)
    assert m["n"] == 4 and m["parse_rate"] == 1.0
    assert m["title_exact_match"] == 0.5 and m["category_accuracy"] == 0.5
    assert m["price_mae"] == pytest.approx((0 + 50 + 450 + 1550) / 4)
    assert m["price_mape"] == pytest.approx((0 + 0.1 + 0.5 + 0.775) / 4)
    assert m["price_median_ape"] == pytest.approx(0.3)
    assert m["price_within_10pct"] == 0.5 and m["price_within_25pct"] == 0.5
    assert m["category_macro_f1"] == pytest.approx((2 / 3) / 3)
    assert result.baselines["mean_price"]["prediction"] == pytest.approx(4550 / 6)
    assert result.baselines["median_price"]["prediction"] == pytest.approx(465.0)
    assert result.baselines["majority_category"]["prediction"] == "scarves"
    row = result.predictions[1]
    assert row["id"] == "T2" and row["image"].endswith("T2.jpg") and Path(row["image"]).is_file()
    assert row["generated"] == LISTING and row["parsed"]["price"] == 450.0 and row["parsed_ok"]
    assert row["reference"] == {"title": "check  wool scarf", "category": "Scarves", "price": 500.0}
    assert (
        row["reference_listing"] == "Product: check  wool scarf, Category: Scarves, Full Price: 500"
    )
    assert row["correct"]["title_exact"] and row["correct"]["price_within_10pct"]


def test_limit_takes_the_first_rows(eval_inputs: EvalInputs):
    model, processor = _listing(eval_inputs)
    test = load_prepared(eval_inputs.data, "test")
    result = evaluate_model(model, processor, test, PromptTemplate(), GEN, limit=2)
    assert [r["id"] for r in result.predictions] == ["T1", "T2"] and result.metrics["n"] == 2
    assert result.baselines == {}


def test_run_eval_writes_predictions_metrics_and_report_with_base_model(
    eval_inputs: EvalInputs, tmp_path: Path
):
    out = tmp_path / "eval"
    args = EvalArgs(
        inference=InferenceArgs(
            model=eval_inputs.listing_model,
            generation=GenerationArgs(max_new_tokens=32, batch_size=4),
        ),
        data=eval_inputs.data,
        base_model=eval_inputs.checkpoint,
        out=out,
    )
    result = run_eval(args)
    assert result.out == out
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["T1", "T2", "T3", "T4"]
    assert {"id", "image", "reference", "generated", "parsed", "correct"} <= set(rows[0])
    doc = json.loads((out / "metrics.json").read_text())
    for key in ("parse_rate", "category_accuracy", "title_exact_match", "price_mape"):
        assert key in doc["model"] and key in doc["base_model"]
    assert doc["model"]["parse_rate"] == 1.0 and doc["base_model"]["parse_rate"] < 1.0
    assert doc["baselines"]["mean_price"]["price_mape"] == pytest.approx(
        result.baselines["mean_price"]["price_mape"]
    )
    assert len((out / "base_predictions.jsonl").read_text().splitlines()) == 4
    page = (out / "report.html").read_text()
    assert "Base model generated" in page and page.count('<tr class="sample"') == 4


def test_run_eval_on_a_run_folder_plots_its_curves(eval_inputs: EvalInputs, tmp_path: Path):
    run = tmp_path / "run"
    shutil.copytree(eval_inputs.listing_model, run / "model")
    events = [
        {"step": 1, "loss": 2.5},
        {"step": 1, "eval_loss": 1.4, "eval_parse_rate": 0.5, "eval_n": 4},
        {"step": 2, "loss": 1.0},
        {"step": 2, "eval_loss": 1.2, "eval_parse_rate": 1.0, "eval_n": 4},
    ]
    torn = '{"step": 3, "lo'  # a run killed while writing its log
    (run / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events) + torn)
    inference = InferenceArgs(model=run, generation=GEN)
    result = run_eval(EvalArgs(inference=inference, data=eval_inputs.data, split="val", limit=1))
    assert result.out == run / "eval-val"
    page = (run / "eval-val" / "report.html").read_text()
    assert 'id="curves"' in page and page.count('<svg class="curve"') == 2  # loss, parse rate
    assert 'data-name="eval_parse_rate"' in page and 'data-name="eval_n"' not in page


def test_generation_eval_for_training_restores_train_mode_of_a_peft_model(eval_inputs: EvalInputs):
    peft = pytest.importorskip("peft")
    model, processor = _listing(eval_inputs)
    lora = peft.get_peft_model(
        model, peft.LoraConfig(r=2, target_modules=["qkv_proj"], lora_dropout=0.1)
    )
    lora.train()
    evaluate = make_generation_eval(
        load_prepared(eval_inputs.data, "val"), PromptTemplate(), GEN, limit=2
    )
    metrics, rows = evaluate(lora, processor)
    assert lora.training and metrics["parse_rate"] == 1.0 and len(rows) == 2
    assert rows[0]["generated"] == LISTING and rows[0]["reference_listing"].startswith("Product: ")
    assert all(p.grad is None for p in lora.parameters())


def test_an_unreadable_dataset_image_is_skipped_named_and_the_rest_scored(
    eval_inputs: EvalInputs, tmp_path: Path
):
    data = tmp_path / "data"
    shutil.copytree(eval_inputs.data, data)
    split = load_prepared(data, "test")
    bad = split.image_paths()[0]
    bad.write_bytes(b"not a jpeg")
    model, processor = _listing(eval_inputs)
    result = evaluate_model(model, processor, split, PromptTemplate(), GEN)
    assert [s["image"] for s in result.skipped] == [str(bad)]
    assert bad.name in result.skipped[0]["reason"]
    assert result.metrics["skipped_images"] == 1.0
    assert result.metrics["n"] == len(split) - 1 == len(result.predictions)
    assert str(bad) not in {row["image"] for row in result.predictions}

    for path in split.image_paths():
        path.write_bytes(b"not a jpeg")
    with pytest.raises(EvalError, match="none of the"):
        evaluate_model(model, processor, split, PromptTemplate(), GEN)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"data": "d"}, "model: required"),
        ({"inference": InferenceArgs(model="m")}, "data: required"),
        ({"inference": InferenceArgs(model="m"), "data": "d", "limit": 0}, "limit"),
    ],
)
def test_eval_args_are_validated(kwargs: dict, match: str):
    with pytest.raises(ValueError, match=match):
        EvalArgs(**kwargs)
