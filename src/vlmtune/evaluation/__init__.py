"""Judging what a model writes: field-by-field metrics, reports and predictions.

- ``args``: ``EvalArgs``, ``PredictArgs`` (typed, validated configuration around the shared
  ``vlmtune.inference.args.InferenceArgs``);
- ``metrics``: per-field metrics and training-split baselines (``compute_metrics``, ``baseline_metrics``);
- ``evaluate``: ``evaluate_model`` and ``make_generation_eval`` (the evaluation run during training);
- ``run``: ``run_eval``, the ``vlmtune eval`` command: checks before work, then predictions.jsonl,
  metrics.json and report.html written atomically;
- ``report`` and ``charts``: the self-contained ``report.html`` (its markup, CSS and JS are the
  Jinja2 template in ``templates/``; the chart geometry is ``charts``);
- ``predict``: a listing per image file, as CSV.

Model loading and generation come from ``inference``. Imports ``inference``, ``data``,
``models`` and ``utils``; never ``training``, ``serving`` or ``cli``.
"""
