"""``progemu serve``: a web page for clinicians and teachers (Gradio).

A user uploads a prior radiograph (PNG, JPG or DICOM) or picks a bundled example, types or composes
a hypothesis ("New small left pleural effusion"), and sees the counterfactual follow-up beside the
prior (comparison slider), the difference map, the interpretation with each phrase colour-coded and
its attention map, the spread map over several samples, and a download of everything.

Modules (importing this package imports neither gradio nor torch):

- :mod:`progemu.serve.inputs`   -- reading and checking an uploaded prior (limits, clear messages)
- :mod:`progemu.serve.prompts`  -- composing a hypothesis from finding x side x change
- :mod:`progemu.serve.examples` -- bundled examples (example folders, a curated dataset's test split)
- :mod:`progemu.serve.render`   -- colour maps, attention overlays, phrase spans, the download bundle
- :mod:`progemu.serve.app`      -- ``build_app(pipeline, examples=..., limits=...) -> gr.Blocks``
- :mod:`progemu.serve.cli`      -- ``progemu serve --model DIR``
"""
