"""Bundled examples offered on the page: an example folder and/or a curated dataset's test split.

An example folder (``progemu serve --examples DIR``; the demo writes one from the synthetic world)
is either

- described by ``DIR/examples.jsonl``: one line per example,
  ``{"name": "...", "image": "relative/or/absolute.png", "prompt": "..." (optional)}``; or
- just images (``*.png``, ``*.jpg``, ``*.jpeg``, ``*.dcm``), each optionally with a sidecar
  ``<stem>.json`` holding ``"prompt"`` (or the ICG-CXR key ``"progression-description"``).

With ``--data DIR`` (a curated ICG-CXR dataset) the priors of its test split are offered, each with
the dataset's prompt.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

__all__ = ["Example", "find_examples", "examples_from_dataset", "unique_names"]

log = logging.getLogger(__name__)

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom"}


@dataclasses.dataclass(frozen=True)
class Example:
    """One prior the user can pick instead of uploading.

    ``name``: shown in the drop-down (unique within a page); ``path``: the image file;
    ``prompt``: a hypothesis that goes with it (or ``None``); ``source``: where it came from.
    """

    name: str
    path: Path
    prompt: str | None = None
    source: str = "examples"


def _sidecar_prompt(image: Path) -> str | None:
    sidecar = image.with_suffix(".json")
    if not sidecar.is_file():
        return None
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        log.warning("example sidecar %s is not valid JSON (%s); using the image without a prompt", sidecar, error)
        return None
    if not isinstance(data, dict):
        return None
    prompt = data.get("prompt") or data.get("progression-description")
    return str(prompt) if prompt else None


def find_examples(directory: str | os.PathLike) -> list[Example]:
    """Examples in one folder (see the module docstring for the two layouts).

    Raises ``FileNotFoundError`` if the folder does not exist and ``ValueError`` naming the line
    of a malformed ``examples.jsonl``. Entries whose image is missing are skipped with a warning.
    """
    from progemu.utils.atomic import read_jsonl

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: example folder not found (give --examples an existing folder)")
    index = directory / "examples.jsonl"
    examples: list[Example] = []
    if index.is_file():
        for number, record in enumerate(read_jsonl(index), start=1):
            if not isinstance(record, dict) or "image" not in record:
                raise ValueError(f"{index}: line {number} has no \"image\" key; expected {{\"name\", \"image\", \"prompt\"}}")
            image = Path(record["image"])
            image = image if image.is_absolute() else directory / image
            if not image.is_file():
                log.warning("%s: line %d names a missing image %s; skipped", index, number, image)
                continue
            prompt = record.get("prompt")
            examples.append(Example(str(record.get("name") or image.stem), image, str(prompt) if prompt else None, str(directory)))
        return examples
    for image in sorted(directory.iterdir()):
        if image.is_file() and image.suffix.lower() in _IMAGE_SUFFIXES:
            examples.append(Example(image.stem, image, _sidecar_prompt(image), str(directory)))
    return examples


def examples_from_dataset(data_dir: str | os.PathLike, split: str = "test", limit: int = 24) -> list[Example]:
    """Up to ``limit`` priors of a curated dataset's ``split``, each with the dataset's prompt.

    Pairs are taken in ``pair_id`` order so the list is the same on every start. Raises
    ``FileNotFoundError`` if ``data_dir`` is not a curated dataset.
    """
    from progemu.data.icgcxr import load_pairs

    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{data_dir}: dataset folder not found (give --data a folder written by `progemu curate`)")
    pairs = sorted(load_pairs(data_dir, split=split), key=lambda pair: pair.pair_id)
    if not pairs:
        log.warning("%s: no pairs in split %r; no dataset examples offered", data_dir, split)
    return [
        Example(f"{split}: {pair.pair_id}", Path(pair.prior_image), pair.prompt or None, f"{data_dir} ({split})")
        for pair in pairs[:limit]
    ]


def unique_names(examples: list[Example]) -> list[Example]:
    """Make drop-down names unique by appending " (2)", " (3)"... to repeats, keeping order."""
    seen: dict[str, int] = {}
    result = []
    for example in examples:
        count = seen.get(example.name, 0) + 1
        seen[example.name] = count
        result.append(example if count == 1 else dataclasses.replace(example, name=f"{example.name} ({count})"))
    return result
