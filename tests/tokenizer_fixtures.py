"""Small tokenizers and image folders for the tokenizer tests (built here, never downloaded)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from progemu.tokenizer.presets import TokenizerConfig
from progemu.utils.atomic import atomic_save_png

#: 32 px -> 8x8 codes (4x downsampling), 64 codes: runs a training step in milliseconds
TINY = TokenizerConfig(name="tiny", image_size=32, codebook_size=64, embed_dim=4, base_channels=32,
                       channel_multiplier=(1, 1, 1), num_res_blocks=1)
#: the released Emu3 layout in miniature: RGB in/out, video-style temporal factor 4, attention in the encoder
TINY_EMU3_LIKE = TokenizerConfig(name="tiny_emu3", image_size=32, codebook_size=64, embed_dim=4, in_channels=3,
                                 out_channels=3, temporal_downsample_factor=4, base_channels=32,
                                 channel_multiplier=(1, 1, 2), num_res_blocks=1, attn_resolutions=(2,))


def smooth_images(count: int, size: int, seed: int = 0) -> np.ndarray:
    """``float32 [count, size, size]`` in [0, 1]: a few Gaussian blobs on a vertical gradient (radiograph-like smoothness)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images = []
    for _ in range(count):
        image = 0.2 + 0.3 * yy
        for _ in range(3):
            cx, cy, r, a = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.08, 0.25), rng.uniform(-0.3, 0.4)
            image = image + a * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
        images.append(np.clip(image, 0, 1))
    return np.stack(images).astype(np.float32) if images else np.zeros((0, size, size), np.float32)


def write_image_folder(root: Path, patients: int = 4, per_patient: int = 3, size: int = 40, seed: int = 0) -> list[Path]:
    """PNG files ``root/pNN/imgK.png`` (``size`` px, deliberately not the tokenizer's size); returns their paths."""
    images = smooth_images(patients * per_patient, size, seed)
    paths = []
    for index, image in enumerate(images):
        path = root / f"p{index // per_patient:02d}" / f"img{index % per_patient}.png"
        atomic_save_png(path, image)
        paths.append(path)
    return paths


def write_curated(root: Path, pairs: int = 3, size: int = 32, seed: int = 0) -> Path:
    """A tiny curated ICG-CXR dataset (official layout + manifest) via ``progemu.data.icgcxr``; last pair in 'test'."""
    from progemu.data.icgcxr import load_pairs, write_manifest, write_pair

    images = smooth_images(2 * pairs, size, seed)
    for index in range(pairs):
        split = "test" if index == pairs - 1 else "train"
        subject = f"{10000000 + index}"
        pair_json = {"subject-id": subject, "reference-study-id": f"5000000{index}", "followup-study-id": f"5100000{index}",
                     "reference-study-order": 1, "followup-study-order": 2, "split": split,
                     "progression-description": "Mild pleural effusion has developed.",
                     "changes-of-findings": "Blunting of the costophrenic angle.", "comment": {"confidence": 5}}
        write_pair(root, pair_json, images[2 * index], images[2 * index + 1], source="mimic_cxr", split=split)
    write_manifest(root, load_pairs(root))
    return root
