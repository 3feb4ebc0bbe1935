"""Evaluation as in the paper's Table 1: metrics, evaluators, baselines, report.

Python entry points (import the submodules; this package imports nothing heavy):

- :func:`progemu.evaluate.runner.evaluate` -- the whole ``progemu evaluate`` job
  (generate or read cached generations, score every row, write ``metrics.json``,
  ``table.md``, ``report.html`` and ``figures/``), configured by
  :class:`progemu.evaluate.runner.EvaluateConfig`.
- :func:`progemu.evaluate.evaluators.train_evaluators` /
  :func:`progemu.evaluate.evaluators.load_evaluators` -- synthetic-world evaluators;
  :func:`progemu.evaluate.evaluators.load_real_evaluators` -- torchxrayvision + BiomedCLIP.
- metric functions: :mod:`.fid`, :mod:`.clip_score`, :mod:`.classification`, :mod:`.text_metrics`.
"""
