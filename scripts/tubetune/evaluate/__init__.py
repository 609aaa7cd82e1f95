"""Step 12 (rules/evaluate.smk): the base and the tuned model compared on the test split.

* rule answer_test, :func:`tubetune.evaluate.run.answer_test`: greedy answers of both GGUF exports
  through llama.cpp (:mod:`tubetune.evaluate.generate`), test loss / perplexity with the prompt masked,
  MLX on both model dirs (:mod:`tubetune.train.loss`, also used by training), every answer scored:
  ROUGE-L, chrF, format compliance, refusal rate, lengths (:mod:`tubetune.evaluate.metrics`) ->
  ``answers.jsonl`` and ``scores.json``,
* rule evaluate, :func:`tubetune.evaluate.summary.evaluate`: a paired bootstrap 95% interval for every
  delta (:mod:`tubetune.evaluate.deltas`, :mod:`tubetune.evaluate.bootstrap`), the judge's verdict and
  export parity (:mod:`tubetune.evaluate.verdict`) -> ``metrics.json`` and a self-contained
  ``report.html`` (:mod:`tubetune.evaluate.report`, :mod:`tubetune.evaluate.plots`),
* rule judge (:mod:`tubetune.evaluate.judge`) and rule parity (:mod:`tubetune.evaluate.parity`).
"""
