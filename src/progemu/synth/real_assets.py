"""Real frontal radiographs shipped as the anatomy of the real-anatomy world, and the held-out real priors.

The package folder ``progemu/assets/anatomy/`` holds (built once from the Hannover COVID-19 image
repository and the V7 Labs lung masks with :func:`build_assets`; see ``NOTICE`` there)::

    index.json          {"images": [{image_id, patient_id, projection, has_mask, source_size}], ...}
    held_out.json       {"held_out": [{image_id, patient_id, projection, has_mask, reason}], ...}
    images/ID.png       8-bit greyscale, 256 x 256: the full height and a window of columns centred
                        between the lungs' lateral edges (``crop_columns``), stretched to a square
    masks/ID.png        the human-drawn lung mask at 256 x 256 (0 background, 255 lung; nearest neighbour)
    NOTICE              sources, licences and attribution

Only images that have a human-drawn lung mask are used as anatomy (no model-made masks); every
image of a held-out patient is left out. Held out: the patients of the first ten ``pa`` rows of
``data.csv`` (the project's real-prior test set) and the first :data:`EXTRA_HELD_OUT` further
patients with a masked PA image (real priors with masks for measuring an inserted effusion).

``python -m progemu.synth.real_assets --hannover DIR`` rebuilds the folder.
"""
from __future__ import annotations

import argparse
import csv
import functools
import json
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["ASSET_DIR", "ASSET_SIZE", "EXTRA_HELD_OUT", "anatomy_index", "anatomy_ids", "load_base",
           "held_out_records", "held_out_priors", "build_assets"]

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "anatomy"
ASSET_SIZE = 256
EXTRA_HELD_OUT = 4
_TEST_PA_ROWS = 10


@functools.lru_cache(maxsize=1)
def anatomy_index() -> dict:
    """The parsed ``index.json`` of the shipped anatomy (raises naming the file when absent)."""
    path = ASSET_DIR / "index.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: the real anatomy assets are missing; rebuild them with "
                                "`python -m progemu.synth.real_assets --hannover DIR`")
    return json.loads(path.read_text(encoding="utf-8"))


def anatomy_ids() -> list[str]:
    """Image ids usable as anatomy, sorted (the order the world draws from)."""
    return sorted(rec["image_id"] for rec in anatomy_index()["images"])


def anatomy_record(image_id: str) -> dict:
    for rec in anatomy_index()["images"]:
        if rec["image_id"] == image_id:
            return rec
    raise KeyError(f"{image_id!r} is not a shipped anatomy image (see {ASSET_DIR / 'index.json'})")


@functools.lru_cache(maxsize=128)
def load_base(image_id: str) -> tuple[np.ndarray, np.ndarray]:
    """(image float32 [256, 256] in [0, 1], lung mask float32 [256, 256] in {0, 1}) of one base image."""
    anatomy_record(image_id)
    out = []
    for folder in ("images", "masks"):
        path = ASSET_DIR / folder / f"{image_id}.png"
        try:
            array = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0
        except (OSError, ValueError) as error:
            raise ValueError(f"{path}: unreadable anatomy asset ({error})") from None
        if array.shape != (ASSET_SIZE, ASSET_SIZE):
            raise ValueError(f"{path}: expected {ASSET_SIZE}x{ASSET_SIZE}, got {array.shape}")
        out.append(array)
    image, mask = out
    mask = (mask > 0.5).astype(np.float32)
    image.setflags(write=False)
    mask.setflags(write=False)
    return image, mask


def _read_rows(hannover: Path) -> list[dict]:
    path = hannover / "data.csv"
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as error:
        raise FileNotFoundError(f"{path}: cannot read the Hannover table ({error})") from None
    for number, row in enumerate(rows, 2):
        if not row.get("image_id") or not row.get("patient_id") or row.get("projection") not in ("pa", "ap"):
            raise ValueError(f"{path}: line {number} lacks image_id / patient_id / projection pa|ap")
    return rows


def held_out_records(hannover: str | Path) -> list[dict]:
    """The held-out images (all images of the held-out patients) with the reason, from ``data.csv``."""
    hannover = Path(hannover)
    rows = _read_rows(hannover)
    masked = {p.stem for p in (hannover / "lung_masks").glob("*.png")}
    test_patients = []
    for row in [r for r in rows if r["projection"] == "pa"][:_TEST_PA_ROWS]:
        if row["patient_id"] not in test_patients:
            test_patients.append(row["patient_id"])
    extra = []
    for row in rows:
        pid = row["patient_id"]
        if (row["projection"] == "pa" and row["image_id"] in masked and pid not in test_patients and pid not in extra
                and len(extra) < EXTRA_HELD_OUT):
            extra.append(pid)
    out = []
    for row in rows:
        pid = row["patient_id"]
        if pid in test_patients or pid in extra:
            reason = ("real-prior test set (patient of the first ten pa rows of data.csv)" if pid in test_patients
                      else "real priors with a human lung mask (measure effusion insertion on unseen patients)")
            out.append({"image_id": row["image_id"], "patient_id": pid, "projection": row["projection"],
                        "has_mask": row["image_id"] in masked, "reason": reason})
    return out


def held_out_priors(shared_real: str | Path, masked_only: bool = False) -> list[dict]:
    """Held-out real priors as paths under the shared data folder (``.../data/real`` or its ``hannover``).

    Returns, in the order of ``held_out.json``, dicts ``{image_id, patient_id, projection, has_mask,
    reason, image: Path, mask: Path | None}``; ``masked_only`` keeps those with a human lung mask.
    """
    root = Path(shared_real)
    if not (root / "data.csv").exists():
        root = root / "hannover"
    listed = json.loads((ASSET_DIR / "held_out.json").read_text(encoding="utf-8"))["held_out"]
    out = []
    for rec in listed:
        image = root / "png" / f"{rec['image_id']}.png"
        mask = root / "lung_masks" / f"{rec['image_id']}.png"
        if not image.exists():
            raise FileNotFoundError(f"{image}: held-out prior {rec['image_id']} is missing from {root}")
        if masked_only and not rec["has_mask"]:
            continue
        out.append({**rec, "image": image, "mask": mask if rec["has_mask"] else None})
    return out


def _open(path: Path) -> Image.Image:
    try:
        return Image.open(path).convert("L")
    except OSError as error:
        raise ValueError(f"{path}: unreadable image ({error})") from None


def centred_window(mask: np.ndarray, fill: float = 0.88) -> tuple[int, int]:
    """Columns ``(x0, x1)`` of a window centred between the lungs' lateral edges (mask [H, W] bool).

    As wide as the lungs / ``fill`` where the image allows, else the widest centred window that fits.
    """
    cols = np.flatnonzero(mask.any(axis=0))
    if cols.size == 0:
        raise ValueError("the lung mask is empty")
    width = mask.shape[1]
    mid = 0.5 * (cols[0] + cols[-1] + 1)
    half = min((cols[-1] + 1 - cols[0]) / (2 * fill), mid, width - mid)
    return int(round(mid - half)), int(round(mid + half))


def _square(image: Image.Image, window: tuple[int, int], resample) -> np.ndarray:
    x0, x1 = window
    return np.asarray(image.crop((x0, 0, x1, image.size[1])).resize((ASSET_SIZE, ASSET_SIZE), resample))


def build_assets(hannover: str | Path, out: str | Path = ASSET_DIR) -> dict:
    """(Re)build the anatomy folder from the Hannover folder; returns the index written."""
    hannover, out = Path(hannover), Path(out)
    rows = _read_rows(hannover)
    held = held_out_records(hannover)
    held_patients = {r["patient_id"] for r in held}
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    images = []
    for row in rows:
        mask_path = hannover / "lung_masks" / f"{row['image_id']}.png"
        if row["patient_id"] in held_patients or not mask_path.exists():
            continue
        src = hannover / "png" / f"{row['image_id']}.png"
        image, mask_image = _open(src), _open(mask_path)
        if mask_image.size != image.size:
            raise ValueError(f"{mask_path}: mask size {mask_image.size} differs from the image's {image.size}")
        window = centred_window(np.asarray(mask_image) > 127)
        Image.fromarray(_square(image, window, Image.BILINEAR)).save(out / "images" / f"{row['image_id']}.png",
                                                                   optimize=True)
        mask = (_square(mask_image, window, Image.NEAREST) > 127).astype(np.uint8) * 255
        Image.fromarray(mask).convert("1").save(out / "masks" / f"{row['image_id']}.png", optimize=True)
        images.append({"image_id": row["image_id"], "patient_id": row["patient_id"],
                       "projection": row["projection"].upper(), "has_mask": True, "source_size": list(image.size),
                       "crop_columns": list(window)})
    index = {"source": "Hannover Medical School COVID-19 image repository (CC BY 3.0); lung masks V7 Labs (CC BY 4.0)",
             "size": ASSET_SIZE, "resize": "columns crop_columns (centred between the lungs) stretched to a square (bilinear; masks nearest)",
             "mask_policy": "only images with a human-drawn lung mask are used; no model-made masks",
             "images": images}
    (out / "index.json").write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
    (out / "held_out.json").write_text(json.dumps({
        "note": "never used as anatomy: every image of these patients is left out of the real-anatomy world",
        "held_out": held}, indent=1) + "\n", encoding="utf-8")
    anatomy_index.cache_clear()
    return index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m progemu.synth.real_assets", description=__doc__.split("\n\n")[0])
    parser.add_argument("--hannover", required=True, help="the hannover folder (data.csv, png/, lung_masks/)")
    parser.add_argument("--out", default=str(ASSET_DIR), help="output folder (default: the package's)")
    args = parser.parse_args(argv)
    index = build_assets(args.hannover, args.out)
    print(f"wrote {len(index['images'])} anatomy images to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
