"""Curation of ICG-CXR from MIMIC-CXR, CheXpert Plus or the synthetic world.

``progemu curate --mimic DIR | --chexpert-plus DIR --out OUT`` (see :mod:`progemu.curate.cli`):

- readers: :mod:`progemu.data.mimic` (MIMIC-CXR-JPG + reports, dates), :mod:`progemu.data.chexpert_plus`,
  :mod:`progemu.data.sections` (official MIMIC-CXR section rules), :mod:`progemu.data.images` (PNG/JPG/DICOM);
- :mod:`~progemu.curate.select`: one PA image per study, report filter, consecutive pairs within --max-days, split;
- :mod:`~progemu.curate.preprocess` (border removal, resize, quality) and :mod:`~progemu.curate.register`
  (SimpleITK rigid + affine, and the official settings for comparison), run per pair by
  :mod:`~progemu.curate.images` in a process pool;
- :mod:`~progemu.curate.annotation`: the annotator interface (rules / llm);
- :mod:`~progemu.curate.pipeline`: resumable orchestration, journal, manifest, ``skipped.jsonl``;
  :mod:`~progemu.curate.card`: ``dataset_card.md``; :mod:`~progemu.curate.config`: ``curate_config.json``.

Importing this package imports nothing heavy.
"""
