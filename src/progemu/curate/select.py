"""Selection of studies and pairing of consecutive studies.

Rules, applied in this order (each step's survivors are counted for the dataset card):

1. a study whose record is unusable (no report file, unparsable StudyDate/StudyTime, bad
   CheXpert Plus row) is dropped with that reason;
2. **one frontal PA image per study**: among the study's images whose view is ``PA``
   (MIMIC ``ViewPosition``; CheXpert Plus ``frontal_lateral == Frontal`` and ``ap_pa == PA``),
   the one with the most pixels (Rows x Columns, unknown counts as 0), ties broken by the
   smallest image id; a study without a PA image is dropped;
3. studies with an empty findings or impression section are dropped;
4. each patient's remaining studies are sorted by StudyDate + StudyTime (MIMIC) or by
   ``patient_report_date_order`` (CheXpert Plus); every two *consecutive* remaining studies
   form a candidate pair, kept when the follow-up is at most ``max_days`` after the prior
   (MIMIC only: CheXpert Plus has no dates, its ``time-interval`` is null).

The split of a pair is decided per patient, so train and test never share a patient:
``hash`` puts a patient in test when a CRC32 of ``seed:source:subject`` falls below
``test_fraction``; ``official`` uses the follow-up study's split from the source dataset. When a dataset root holds
``split_groups.csv`` (``subject_id,group``; written by the synthetic world on real anatomy, whose
patients made from one base radiograph share a group), ``hash`` hashes ``seed:group:GROUP``
instead, so a group's patients always share a split.
"""
from __future__ import annotations

import csv
import dataclasses
from collections import OrderedDict
from pathlib import Path

from progemu.data.icgcxr import pair_name, stable_fraction
from progemu.data.mimic import Study, StudyImage

__all__ = ["Candidate", "Skip", "choose_pa_image", "select_pairs", "assign_split", "split_groups", "SPLIT_GROUPS_FILE"]

SPLIT_GROUPS_FILE = "split_groups.csv"
_ROOT_DEPTH = 6  # how far above an image its dataset root may be


@dataclasses.dataclass
class Skip:
    """One record left out, with the step and the reason (written to ``skipped.jsonl``)."""

    record: str
    stage: str
    reason: str


@dataclasses.dataclass
class Candidate:
    """A prior/follow-up study pair that passed selection (before images and annotation)."""

    record_id: str  # "<source>/p<subject>/<pair name>", as Pair.pair_id
    source: str
    subject_id: str
    name: str
    prior: Study
    followup: Study
    prior_image: StudyImage
    followup_image: StudyImage
    interval_days: float | None
    split: str


def choose_pa_image(study: Study) -> StudyImage | None:
    """The study's PA image by the documented rule (most pixels, then smallest id), or None."""
    candidates = [image for image in study.images if image.view == "PA" and image.frontal is not False]
    if not candidates:
        return None
    return min(candidates, key=lambda image: (-(image.rows or 0) * (image.columns or 0), image.image_id))


def _read_groups(path: Path) -> dict[str, str]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as error:
        raise ValueError(f"{path}: cannot read the split groups ({error})") from None
    if rows and not {"subject_id", "group"} <= set(rows[0]):
        raise ValueError(f"{path}: expected the columns subject_id,group")
    return {row["subject_id"]: row["group"] for row in rows if row.get("group")}


def split_groups(studies: list[Study]) -> dict[tuple[str, str], str]:
    """``{(source, subject_id): group}`` from the ``split_groups.csv`` above the studies' images (if any)."""
    roots: dict[Path, Path | None] = {}
    tables: dict[Path, dict[str, str]] = {}
    out: dict[tuple[str, str], str] = {}
    for study in studies:
        if not study.images:
            continue
        walked, found = [], None
        for folder in list(Path(study.images[0].path).parents)[:_ROOT_DEPTH]:
            if folder in roots:
                found = roots[folder]
                break
            walked.append(folder)
            if (folder / SPLIT_GROUPS_FILE).is_file():
                found = folder
                break
        for folder in walked:
            roots[folder] = found
        if found is None:
            continue
        if found not in tables:
            tables[found] = _read_groups(found / SPLIT_GROUPS_FILE)
        table = tables[found]  # CheXpert Plus lists deid_patient_id "patientN"; its studies carry N
        group = table.get(study.subject_id) or table.get(f"patient{study.subject_id}")
        if group:
            out[(study.source, study.subject_id)] = group
    return out


def assign_split(study: Study, mode: str, test_fraction: float, seed: int, group: str | None = None) -> str:
    """Patient-level split of a pair whose follow-up is ``study`` (see module docstring).

    ``group``: the patient's split group (patients of one group share the hash split).
    """
    if mode == "official":
        if not study.split:
            raise ValueError(f"{study.key}: no official split in the source data; use --split hash")
        return {"valid": "validate", "val": "validate"}.get(study.split, study.split)
    if mode != "hash":
        raise ValueError(f"unknown split mode {mode!r}; choose 'hash' or 'official'")
    key = f"{seed}:group:{group}" if group else f"{seed}:{study.source}:{study.subject_id}"
    return "test" if stable_fraction(key) < test_fraction else "train"


def select_pairs(studies: list[Study], *, max_days: float, split: str = "hash", test_fraction: float = 0.1,
                 seed: int = 0, groups: dict[tuple[str, str], str] | None = None
                 ) -> tuple[list[Candidate], list[Skip], "OrderedDict[str, int]"]:
    """Apply the rules of the module docstring.

    ``groups``: ``{(source, subject_id): split group}``; by default read from the
    ``split_groups.csv`` files above the images (:func:`split_groups`).

    Returns the candidate pairs (sorted by record id), the skipped records (studies and
    pairs, with reasons) and the ordered counts left after each step.
    """
    counts: OrderedDict[str, int] = OrderedDict()
    skips: list[Skip] = []
    if groups is None:
        groups = split_groups(studies)
    counts["studies read"] = len(studies)
    counts["patients read"] = len({(s.source, s.subject_id) for s in studies})

    usable = []
    for study in studies:
        if study.problem:
            skips.append(Skip(study.key, "read", study.problem))
        else:
            usable.append(study)
    counts["studies with a usable record (report, date)"] = len(usable)

    with_pa: list[tuple[Study, StudyImage]] = []
    for study in usable:
        image = choose_pa_image(study)
        if image is None:
            views = ",".join(sorted({i.view or "?" for i in study.images})) or "none"
            skips.append(Skip(study.key, "view", f"no frontal PA image (views: {views})"))
        else:
            with_pa.append((study, image))
    counts["studies with a frontal PA image"] = len(with_pa)

    kept: list[tuple[Study, StudyImage]] = []
    for study, image in with_pa:
        empty = [name for name in ("findings", "impression") if not getattr(study, name).strip()]
        if empty:
            skips.append(Skip(study.key, "report", f"empty {' and '.join(empty)} section"))
        else:
            kept.append((study, image))
    counts["studies with findings and impression"] = len(kept)

    series: dict[tuple[str, str], list[tuple[Study, StudyImage]]] = {}
    for study, image in kept:
        series.setdefault((study.source, study.subject_id), []).append((study, image))
    counts["patients with 2+ kept studies"] = sum(1 for s in series.values() if len(s) >= 2)

    candidates: list[Candidate] = []
    consecutive = 0
    for (source, subject), items in series.items():
        items.sort(key=lambda item: (item[0].when is None, item[0].when or 0, item[0].order, item[0].study_id)
                   if source == "mimic_cxr" else (item[0].order, item[0].study_id))
        for (prior, prior_image), (followup, followup_image) in zip(items, items[1:]):
            consecutive += 1
            name = pair_name(prior.order, prior.study_id, followup.order, followup.study_id)
            record_id = f"{source}/p{subject}/{name}"
            interval = None
            if prior.when is not None and followup.when is not None:
                interval = (followup.when - prior.when).total_seconds() / 86400.0
                if interval > max_days:
                    skips.append(Skip(record_id, "interval", f"{interval:.1f} days apart > --max-days {max_days:g}"))
                    continue
            try:
                pair_split = assign_split(followup, split, test_fraction, seed, groups.get((source, subject)))
            except ValueError as error:
                skips.append(Skip(record_id, "split", str(error)))
                continue
            candidates.append(Candidate(record_id, source, subject, name, prior, followup, prior_image,
                                        followup_image, None if interval is None else round(interval, 3), pair_split))
    counts["consecutive study pairs"] = consecutive
    counts[f"pairs within --max-days {max_days:g} (dated sources)"] = len(candidates)
    candidates.sort(key=lambda c: c.record_id)
    return candidates, skips, counts
