"""The paper's diffusion baselines in progemu's harness: InstructPix2Pix (BiomedJourney's approach) and PIE.

- :mod:`.config`: ``BaselineConfig`` (training) and ``SampleConfig`` (sampling); the CLI flags derive from them.
- :mod:`.model`: compact image space (pixel-unshuffle, or a diffusers AutoencoderKL), a CLIP text encoder and a
  diffusers ``UNet2DConditionModel`` with zero-initialised prior channels; saving and loading.
- :mod:`.data`: ICG-CXR pairs through the project's one image path; conditioning dropout.
- :mod:`.train`: the resumable training loop (``progemu baseline train``).
- :mod:`.sample`: dual classifier-free guidance (InstructPix2Pix) and masked img2img rounds (PIE);
  ``BaselinePipeline.from_pretrained(dir).generate_batch(priors, prompts, ...)``.
- :mod:`.rows`: the rows of ``progemu evaluate --baseline NAME=DIR`` and ``--generations NAME=DIR``.

Importing this package imports nothing heavy; diffusers loads when a model is built or read.
"""
