"""The synthetic longitudinal chest X-ray world (``progemu synth``).

Modules: :mod:`~progemu.synth.anatomy` (patient body, study pose, coordinate frame),
:mod:`~progemu.synth.findings` (finding keys and states), :mod:`~progemu.synth.geometry`
(where findings sit), :mod:`~progemu.synth.render` / :mod:`~progemu.synth.render_lateral`
(images), :mod:`~progemu.synth.evolution` (how patients change), :mod:`~progemu.synth.reports`
(report text and labels), :mod:`~progemu.synth.writer` (dataset layouts on disk),
:mod:`~progemu.synth.truth` (ground truth, finding regions and measurements for evaluation).
Importing this package imports none of them.
"""
