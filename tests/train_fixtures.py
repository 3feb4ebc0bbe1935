"""Helpers for the model / training tests: a tiny curated dataset and a tiny random image tokenizer."""
from __future__ import annotations

from pathlib import Path

import numpy as np

FINDINGS = [
    ("New small left pleural effusion.", "There is new blunting of the left costophrenic angle. The right lung is clear.", (0.75, 0.25)),
    ("Right upper lobe opacity has developed.", "A new opacity is seen in the right upper lobe. No effusion is present.", (0.25, 0.7)),
    ("Heart size has increased.", "The cardiac silhouette is enlarged compared with the prior study.", (0.55, 0.5)),
    ("No change.", "The lungs are unchanged. There is no new focal consolidation.", None),
]


def make_image(rng: np.random.Generator, size: int, blob: tuple[float, float] | None) -> np.ndarray:
    """float32 [size, size] in [0, 1]: a smooth chest-like gradient + noise (+ a bright blob)."""
    y, x = np.mgrid[0:size, 0:size] / size
    image = 0.3 + 0.4 * np.exp(-((x - 0.5) ** 2) / 0.05) + 0.05 * rng.standard_normal((size, size))
    if blob is not None:
        image += 0.5 * np.exp(-(((y - blob[0]) ** 2) + (x - blob[1]) ** 2) / 0.01)
    return np.clip(image, 0, 1).astype(np.float32)


def make_dataset(root: str | Path, n_pairs: int = 8, size: int = 32, seed: int = 0, split: str = "train") -> Path:
    """A curated ICG-CXR dataset (official layout + manifest) with ``n_pairs`` pairs of ``size`` px."""
    from progemu.data.icgcxr import pair_from_json, write_manifest, write_pair

    root = Path(root)
    rng = np.random.default_rng(seed)
    pairs = []
    for index in range(n_pairs):
        prompt, interpretation, blob = FINDINGS[index % len(FINDINGS)]
        prior = make_image(rng, size, None)
        followup = make_image(rng, size, blob)
        subject = f"1{index:07d}"
        pair_json = {
            "subject-id": subject, "reference-study-id": f"5{index:07d}", "followup-study-id": f"6{index:07d}",
            "reference-study-order": 1, "followup-study-order": 2, "progression-description": prompt,
            "changes-of-findings": interpretation, "comment": {"confidence": 5, "reason": "test"},
            "time-interval": 10, "view": "PA", "split": split,
        }
        path = write_pair(root, pair_json, prior, followup, source="mimic_cxr", split=split)
        pairs.append(pair_from_json(path, root))
    write_manifest(root, pairs)
    return root


def make_image_tokenizer(directory: str | Path, size: int = 32, codebook_size: int = 32, seed: int = 0) -> Path:
    """A random Emu3-VQ-VAE image tokenizer: ``size`` px -> (size/4)^2 codes; saved with save_pretrained."""
    from progemu.tokenizer.presets import TokenizerConfig
    from progemu.tokenizer.vqvae import ImageTokenizer

    config = TokenizerConfig(name="test", image_size=size, codebook_size=codebook_size, base_channels=32,
                             channel_multiplier=(1, 1, 1), num_res_blocks=1)
    ImageTokenizer.from_config(config, seed=seed).save_pretrained(directory)
    return Path(directory)
