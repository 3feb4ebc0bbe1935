"""The synthetic longitudinal chest X-ray world (``progemu synth``).

Modules: :mod:`~progemu.synth.anatomy` (patient body, study pose, coordinate frame),
:mod:`~progemu.synth.findings` (finding keys and states), :mod:`~progemu.synth.geometry`
(where findings sit), :mod:`~progemu.synth.render` / :mod:`~progemu.synth.render_lateral`
(images), :mod:`~progemu.synth.evolution` (how patients change), :mod:`~progemu.synth.reports`
(report text and labels), :mod:`~progemu.synth.writer` (dataset layouts on disk),
:mod:`~progemu.synth.truth` (ground truth, finding regions and measurements for evaluation).
The real-anatomy world (``progemu synth --anatomy real``): :mod:`~progemu.synth.real_assets`
(the shipped Hannover radiographs and lung masks, the held-out real priors),
:mod:`~progemu.synth.real_anatomy` (one base radiograph deformed into a patient),
:mod:`~progemu.synth.real_findings` (findings inserted into it), :mod:`~progemu.synth.real_render`
(a study's frontal image).
Importing this package imports none of them.
"""
