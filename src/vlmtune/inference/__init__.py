"""Running a model: load any supported model folder and generate listings in batches.

- ``args``: ``InferenceArgs`` (the ``inference:`` block of every verb that runs a model)
  and ``GenerationArgs`` (decoding settings);
- ``loading``: ``check_model`` (before any work) and ``load_model_and_processor``;
- ``generate``: batched, left-padded, KV-cached listing generation (``generate_listings``).

Shared by ``evaluation`` (eval, predict, the evaluation run during training) and
``serving``, which do not import each other. Imports ``data``, ``models`` and
``utils``; never ``training``, ``evaluation``, ``serving`` or ``cli``.
"""
