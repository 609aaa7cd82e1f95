"""Step 12 (rules/evaluate.smk): the base and the tuned model compared on the test split.

* :mod:`tubetune.evaluate.run`: the rule's entry function :func:`~tubetune.evaluate.run.evaluate`,
* greedy answers of both GGUF exports through llama.cpp (:mod:`tubetune.evaluate.generate`),
* test loss / perplexity with the prompt masked, MLX on both model dirs (:mod:`tubetune.train.loss`,
  also used by training),
* ROUGE-L, chrF, format compliance, refusal rate, lengths (:mod:`tubetune.evaluate.metrics`),
* ``metrics.json``, ``answers.jsonl`` and a self-contained ``report.html`` (:mod:`tubetune.evaluate.report`).
"""
