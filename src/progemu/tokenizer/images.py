"""Which images a tokenizer stage sees, and how they are brought to the tokenizer's size.

Two kinds of ``--data`` directory are accepted everywhere in this package:

- a curated ICG-CXR dataset (``manifest.jsonl`` or official pair JSONs): its prior and
  follow-up PNGs, optionally of one split (``progemu.data.icgcxr.load_pairs``);
- any folder of PNG / JPG / DICOM radiographs (searched recursively; the ``codes/`` cache
  folder is skipped). A folder has no splits, so ``split`` selects a deterministic
  hold-out by a hash of the patient-level folder (``test`` = ``holdout`` fraction,
  ``train`` = the rest, ``None`` / ``all`` = everything).

Pixels come from ``progemu.data.images.model_input``: read, made square by the project's one
policy and resized to the native size, exactly as generation and evaluation prepare a prior.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["dataset_images", "load_image", "load_images", "is_curated", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm"}


def is_curated(data_dir: str | os.PathLike) -> bool:
    """True when ``data_dir`` holds an ICG-CXR dataset (our manifest or official pair JSONs)."""
    from progemu.data.icgcxr import MANIFEST_NAME, _PAIR_RE

    data_dir = Path(data_dir)
    if (data_dir / MANIFEST_NAME).exists():
        return True
    return any(_PAIR_RE.match(p.stem) for p in data_dir.rglob("*.json"))


def dataset_images(data_dir: str | os.PathLike, split: str | None = None, *, holdout: float = 0.1) -> list[Path]:
    """Sorted, de-duplicated absolute image paths of a dataset (see the module docstring).

    Raises ``FileNotFoundError`` naming the directory when it is missing or holds no image.
    """
    from progemu.data.icgcxr import load_pairs, stable_fraction

    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{data_dir}: data directory not found; give a curated ICG-CXR dataset or a folder of images")
    split = None if split in (None, "all") else split
    if is_curated(data_dir):
        pairs = load_pairs(data_dir, split)
        paths = {Path(p.prior_image) for p in pairs} | {Path(p.followup_image) for p in pairs}
    else:
        paths = set()
        for path in data_dir.rglob("*"):
            if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
                continue
            relative = path.relative_to(data_dir)
            if relative.parts and relative.parts[0] == "codes":
                continue
            if split is not None:
                # hold out whole folders (a patient's studies live together) so test images are unseen
                held_out = stable_fraction(str(relative.parent if len(relative.parts) > 1 else relative)) < holdout
                if (split == "test") != held_out:
                    continue
            paths.add(path)
    if not paths:
        raise FileNotFoundError(f"{data_dir}: no images found{f' in split {split!r}' if split else ''}; "
                                f"expected a curated ICG-CXR dataset or PNG/JPG/DICOM files")
    # abspath, not resolve(): a symlinked image keeps its path inside the dataset (the cache key)
    return sorted(Path(os.path.abspath(p)) for p in paths)


def load_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """One radiograph as ``float32 [size, size]`` in [0, 1] (the project's one image path)."""
    from progemu.data.images import model_input

    return model_input(path, size)


def load_images(paths: list[Path], size: int, *, progress: bool = False, desc: str = "reading images",
                skip_unreadable: bool = False) -> np.ndarray | tuple[np.ndarray, list[Path], dict[str, str]]:
    """Stack of images as ``uint8 [N, size, size]`` (8 bits keep a dataset small in memory; PNGs are 8-bit anyway).

    With ``skip_unreadable`` an image that ``read_image`` refuses (truncated, not an image) is
    left out and ``(images, kept_paths, {path: reason})`` is returned instead; a warning names them.
    """
    import logging

    from tqdm.auto import tqdm

    out = np.empty((len(paths), size, size), dtype=np.uint8)
    kept: list[Path] = []
    failures: dict[str, str] = {}
    for path in tqdm(paths, desc=desc, disable=not progress, leave=False):
        try:
            image = load_image(path, size)
        except (ValueError, OSError) as error:
            if not skip_unreadable:
                raise
            failures[str(path)] = str(error)
            continue
        out[len(kept)] = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
        kept.append(Path(path))
    if not skip_unreadable:
        return out
    if failures:
        logging.getLogger(__name__).warning("skipped %d unreadable image(s): %s", len(failures),
                                            "; ".join(list(failures.values())[:5]))
    return out[: len(kept)], kept, failures
