"""Judging what a model writes: generation, field-by-field metrics, reports and predictions.

- ``args``: ``GenerationArgs``, ``EvalArgs``, ``PredictArgs`` (typed, validated configuration);
- ``generate``: batched, left-padded, KV-cached listing generation (``generate_listings``);
- ``metrics``: per-field metrics and training-split baselines (``compute_metrics``, ``baseline_metrics``);
- ``evaluate``: ``evaluate_model``, ``run_eval`` (predictions.jsonl, metrics.json, report.html) and
  ``make_generation_eval`` (the evaluation run during training);
- ``report``: the self-contained ``report.html``;
- ``predict``: a listing per image file, as CSV.

Imports ``data``, ``models`` and ``utils``; never ``training`` or ``cli``.
"""
