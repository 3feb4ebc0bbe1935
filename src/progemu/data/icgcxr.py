"""The ICG-CXR dataset on disk: the official release layout, pair JSONs and our manifest.

Layout (the official release, GitHub Masaaki-75/progemu README)::

    ROOT/mimic_cxr/pa/1/p10/p10000032/i01s50414267-i02s53189527/
        i01s50414267-i02s53189527.json          # pair JSON (official keys)
        i01s50414267-i02s53189527-ref-reg.png   # prior, registered onto the follow-up
        i01s50414267-i02s53189527-flu-reg.png   # follow-up
    ROOT/chexpertplus/pa/1/train/p00023/i01s0001-i04s0002/...

``iUU``/``iVV`` are the orders (1-based, two digits) of the prior / follow-up study
within the patient's series, ``sXXXX`` the study ids. The segment ``1`` is kept as
the release uses it.

progemu adds ``ROOT/manifest.jsonl`` (one line per pair: the fields of :class:`Pair`
with paths relative to ROOT) and ``ROOT/dataset_card.md``. :func:`load_pairs`
reads the manifest when present and otherwise scans the tree for pair JSONs, so
the official release loads with the same code. Pair JSON keys are the official
ones (``progression-description`` = prompt, ``changes-of-findings`` =
interpretation, ``comment.confidence``, ``reference-diseases`` /
``followup-diseases`` with ``-100`` for a missing label, ...).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import zlib
from pathlib import Path
from typing import Any, Iterable

from progemu.data.labels import CHEXPERT_LABELS, MISSING_LABEL
from progemu.utils.atomic import atomic_save_png, atomic_write_json, read_jsonl

__all__ = [
    "Pair",
    "SOURCES",
    "pair_name",
    "pair_relative_dir",
    "write_pair",
    "pair_from_json",
    "load_pairs",
    "write_manifest",
    "MANIFEST_NAME",
    "labels_to_json",
    "labels_from_json",
    "stable_fraction",
    "read_pairs_list",
]

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.jsonl"
#: source key -> folder name of the release
SOURCES = {"mimic_cxr": "mimic_cxr", "chexpertplus": "chexpertplus"}
_PAIR_RE = re.compile(r"^i(\d+)s([^-]+)-i(\d+)s([^-]+)$")


@dataclasses.dataclass
class Pair:
    """One ICG-CXR quadruple: prior + follow-up image, prompt, interpretation.

    Paths are absolute once loaded. ``prior_labels`` / ``followup_labels`` map the 14
    CheXpert label names to 1.0 / 0.0 / -1.0 or ``None`` (missing).
    """

    pair_id: str  # e.g. "mimic_cxr/p10000032/i01s50414267-i02s53189527"
    source: str  # "mimic_cxr" | "chexpertplus"
    split: str  # "train" | "test" | "validate"
    subject_id: str
    prior_study_id: str
    followup_study_id: str
    prior_order: int
    followup_order: int
    prior_image: Path
    followup_image: Path
    prompt: str
    interpretation: str
    confidence: int | None = None
    time_interval_days: float | None = None
    prior_labels: dict[str, float | None] = dataclasses.field(default_factory=dict)
    followup_labels: dict[str, float | None] = dataclasses.field(default_factory=dict)
    json_path: Path | None = None
    reg_metric: dict[str, Any] | float | None = None

    def to_manifest(self, root: Path) -> dict:
        record = dataclasses.asdict(self)
        for key in ("prior_image", "followup_image", "json_path"):
            if record[key] is not None:
                record[key] = str(Path(record[key]).resolve().relative_to(Path(root).resolve()))
        return record

    @classmethod
    def from_manifest(cls, record: dict, root: Path) -> "Pair":
        record = dict(record)
        for key in ("prior_image", "followup_image", "json_path"):
            if record.get(key) is not None:
                record[key] = Path(root) / record[key]
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in names})


def pair_name(prior_order: int, prior_study_id: str, followup_order: int, followup_study_id: str) -> str:
    """``i01s50414267-i02s53189527`` from study orders (1-based) and study ids."""
    return f"i{int(prior_order):02d}s{prior_study_id}-i{int(followup_order):02d}s{followup_study_id}"


def pair_relative_dir(source: str, subject_id: str, name: str, split: str | None = None) -> Path:
    """Folder of one pair relative to the dataset root, as in the official release."""
    if source == "mimic_cxr":
        subject = str(subject_id).lstrip("p")
        return Path("mimic_cxr", "pa", "1", f"p{subject[:2]}", f"p{subject}", name)
    if source == "chexpertplus":
        subject = str(subject_id)
        subject = subject if subject.startswith("p") else f"p{subject}"
        return Path("chexpertplus", "pa", "1", split or "train", subject, name)
    raise ValueError(f"unknown source {source!r}; expected one of {sorted(SOURCES)}")


def labels_to_json(labels: dict[str, float | None]) -> dict[str, float | int]:
    """14 CheXpert labels with ``-100`` for missing, as in the official pair JSONs."""
    out: dict[str, float | int] = {}
    for name in CHEXPERT_LABELS:
        value = labels.get(name)
        out[name] = MISSING_LABEL if value is None else float(value)
    return out


def labels_from_json(values: dict | None) -> dict[str, float | None]:
    values = values or {}
    out: dict[str, float | None] = {}
    for name in CHEXPERT_LABELS:
        value = values.get(name)
        if value is None or value == "" or float(value) == MISSING_LABEL:
            out[name] = None
        else:
            out[name] = float(value)
    return out


def write_pair(root: str | Path, pair_json: dict, prior_image, followup_image, *, source: str,
               split: str | None = None) -> Path:
    """Write one pair (JSON + two PNGs) atomically in the official layout; returns the JSON path.

    ``pair_json`` uses the official keys and must contain ``subject-id``,
    ``reference-study-id``, ``followup-study-id``, ``reference-study-order``,
    ``followup-study-order``. Images: float arrays [H, W] in [0, 1] or uint8 / PIL.
    Images are written before the JSON so that a JSON on disk implies complete images.
    """
    root = Path(root)
    name = pair_name(pair_json["reference-study-order"], pair_json["reference-study-id"],
                     pair_json["followup-study-order"], pair_json["followup-study-id"])
    folder = root / pair_relative_dir(source, str(pair_json["subject-id"]), name, split or pair_json.get("split"))
    atomic_save_png(folder / f"{name}-ref-reg.png", prior_image)
    atomic_save_png(folder / f"{name}-flu-reg.png", followup_image)
    return atomic_write_json(folder / f"{name}.json", pair_json)


def pair_from_json(json_path: str | Path, root: str | Path | None = None) -> Pair:
    """Read one official pair JSON (and locate its two PNGs beside it)."""
    json_path = Path(json_path)
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{json_path}: unreadable pair JSON ({error}); re-run curation for this pair") from None
    name = json_path.stem
    match = _PAIR_RE.match(name)
    parts = json_path.parts
    source = "chexpertplus" if "chexpertplus" in parts else "mimic_cxr"
    subject = str(data.get("subject-id", json_path.parent.parent.name)).lstrip("p")
    comment = data.get("comment") or {}
    confidence = comment.get("confidence") if isinstance(comment, dict) else None
    split = data.get("split") or ("train" if source == "mimic_cxr" else json_path.parent.parent.parent.name)
    interval = data.get("time-interval")
    return Pair(
        pair_id=f"{source}/p{subject}/{name}",
        source=source,
        split=str(split),
        subject_id=subject,
        prior_study_id=str(data.get("reference-study-id", match.group(2) if match else "")),
        followup_study_id=str(data.get("followup-study-id", match.group(4) if match else "")),
        prior_order=int(data.get("reference-study-order", match.group(1) if match else 0)),
        followup_order=int(data.get("followup-study-order", match.group(3) if match else 0)),
        prior_image=json_path.with_name(f"{name}-ref-reg.png"),
        followup_image=json_path.with_name(f"{name}-flu-reg.png"),
        prompt=str(data.get("progression-description", "")).strip(),
        interpretation=str(data.get("changes-of-findings", "")).strip(),
        confidence=None if confidence is None else int(confidence),
        time_interval_days=None if interval is None else float(interval),
        prior_labels=labels_from_json(data.get("reference-diseases")),
        followup_labels=labels_from_json(data.get("followup-diseases")),
        json_path=json_path,
        reg_metric=data.get("reg_metric"),
    )


def write_manifest(root: str | Path, pairs: Iterable[Pair]) -> Path:
    """Write ``ROOT/manifest.jsonl`` atomically, one line per pair, sorted by pair id."""
    from progemu.utils.atomic import atomic_write_text

    root = Path(root)
    lines = [json.dumps(p.to_manifest(root), ensure_ascii=False, default=str) for p in sorted(pairs, key=lambda p: p.pair_id)]
    return atomic_write_text(root / MANIFEST_NAME, "\n".join(lines) + ("\n" if lines else ""))


def read_pairs_list(path: str | Path, root: str | Path) -> list[Path]:
    """The pair JSON paths named by a pairs list (absolute, in the list's order, duplicates dropped).

    The file is what the official code takes as ``--data_path`` / ``--meta_path``: a JSON list of
    pair JSON paths, or ``{"prefix": DIR, "path_list": [...]}``. Relative paths are taken from
    ``prefix`` when it is given and exists, else from the dataset ``root``. Raises
    ``FileNotFoundError`` naming the list or the first listed pair JSON that does not exist, and
    ``ValueError`` for a file that is not such a list.
    """
    path, root = Path(path), Path(os.path.abspath(root))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"--pairs-list {path}: file not found; give a JSON list of pair JSON paths") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"--pairs-list {path}: not readable JSON ({error})") from None
    base = root
    if isinstance(data, dict):
        prefix = data.get("prefix")
        base = Path(os.path.abspath(prefix)) if prefix and Path(prefix).is_dir() else root
        data = data.get("path_list")
    if not isinstance(data, list) or not data or not all(isinstance(item, str) and item for item in data):
        raise ValueError(f"--pairs-list {path}: expected a non-empty JSON list of pair JSON paths "
                         "(or {\"prefix\": DIR, \"path_list\": [...]})")
    out: list[Path] = []
    for item in dict.fromkeys(data):
        json_path = Path(item) if Path(item).is_absolute() else base / item
        if not json_path.is_file():
            raise FileNotFoundError(f"--pairs-list {path}: pair JSON {json_path} (listed as {item!r}) not found")
        out.append(Path(os.path.abspath(json_path)))
    return out


def _select_listed(pairs: list[Pair], listed: list[Path], root: Path, list_path: str | Path) -> list[Pair]:
    """The pairs whose JSON is listed; listed JSONs the manifest lacks are read from disk."""
    by_json = {Path(os.path.abspath(p.json_path)): p for p in pairs if p.json_path is not None}
    chosen = []
    for json_path in listed:
        try:
            json_path.relative_to(root)
        except ValueError:
            raise ValueError(f"--pairs-list {list_path}: pair JSON {json_path} is outside the dataset {root}; "
                             "list pairs of --data (image codes are cached by their path inside it)") from None
        chosen.append(by_json.get(json_path) or pair_from_json(json_path, root))
    return chosen


def _warn_release_split(root: Path, split: str) -> None:
    """The official release's ``split`` key is the source dataset's split, not ICG-CXR's test list."""
    log.warning("%s has no %s: it looks like the official ICG-CXR release, whose pair JSONs' 'split' key is the "
                "source dataset's split (MIMIC-CXR / CheXpert Plus), not ICG-CXR's 760-pair test set (not released); "
                "split %r is therefore not the paper's %s set. Pass --pairs-list FILE (a JSON list of pair JSON "
                "paths) to choose the pairs.", root, MANIFEST_NAME, split, split)


def load_pairs(root: str | Path, split: str | None = None, *, check_files: bool = True,
               pairs_list: str | Path | None = None) -> list[Pair]:
    """All pairs of a curated dataset (ours or the official release), optionally one split.

    Split names: ``validate`` and ``val`` are the same split. ``pairs_list``: a file read by
    :func:`read_pairs_list`; the listed pairs are returned and ``split`` is ignored. Raises
    ``FileNotFoundError`` naming the directory when it holds no pairs (or the missing list /
    listed file), and ``ValueError`` naming the pair whose image is missing (when ``check_files``).
    A split chosen on a dataset without ``manifest.jsonl`` (the official release) logs a warning.
    """
    # absolute paths: callers key caches by the path relative to the dataset root (Pair docstring)
    root = Path(os.path.abspath(root))
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset directory not found; run `progemu curate --out {root}` first")
    manifest = root / MANIFEST_NAME
    listed = read_pairs_list(pairs_list, root) if pairs_list is not None else None
    if manifest.exists():
        pairs = [Pair.from_manifest(record, root) for record in read_jsonl(manifest)]
    elif listed is not None:
        pairs = []
    else:
        pairs = [pair_from_json(path, root) for path in sorted(root.rglob("*.json")) if _PAIR_RE.match(path.stem)]
    if listed is not None:
        pairs = _select_listed(pairs, listed, root, pairs_list)
    if not pairs:
        raise FileNotFoundError(f"{root}: no ICG-CXR pairs found (no {MANIFEST_NAME} and no pair JSONs)")
    if split is not None and listed is None:
        if not manifest.exists() and split not in ("train",):
            _warn_release_split(root, split)
        wanted = {"val": "validate"}.get(split, split)
        pairs = [p for p in pairs if {"val": "validate"}.get(p.split, p.split) == wanted]
    if check_files:
        for pair in pairs:
            for path in (pair.prior_image, pair.followup_image):
                if not Path(path).exists():
                    raise ValueError(f"pair {pair.pair_id}: image {path} is missing; re-run curation or remove the pair")
    return sorted(pairs, key=lambda p: p.pair_id)


def stable_fraction(key: str) -> float:
    """A deterministic number in [0, 1) from a string (for patient-disjoint splits)."""
    return (zlib.crc32(key.encode("utf-8")) & 0xFFFFFFFF) / 2**32
