"""``progemu curate`` end to end: read -> select -> images -> annotate -> filter -> write.

Nothing is lost and nothing is done twice:

- every candidate pair ends as exactly one line of ``OUT/.curate/journal.jsonl`` (kept, with
  its manifest record, or skipped, with stage and reason), appended and fsync'ed only after
  the pair's files were written atomically (:func:`progemu.data.icgcxr.write_pair`);
- a restarted run (even after SIGKILL) reads the journal, skips the finished pairs and
  recomputes the rest; a pair interrupted between its files and its journal line is simply
  written again with identical content (registration is seeded and single-threaded, the
  rules annotator deterministic, LLM answers come from the on-disk cache);
- the manifest, ``skipped.jsonl`` and ``dataset_card.md`` are rebuilt from the journal at
  the end of every run, so they always describe the whole dataset.

Image work runs in a process pool (``--workers``), annotation in a thread pool (the LLM
annotator bounds its own concurrency); at most a few pairs are in flight, so memory stays
flat on a dataset of any size.
"""
from __future__ import annotations

import concurrent.futures as futures
import dataclasses
import json
import logging
import multiprocessing
import time
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any, Callable

from progemu.curate.config import OUTPUT_FIELDS, CurateConfig
from progemu.curate.images import image_job, init_worker, process_pair_images
from progemu.curate.select import Candidate, Skip, select_pairs
from progemu.data.icgcxr import Pair, labels_to_json, write_manifest, write_pair
from progemu.utils.atomic import append_jsonl, atomic_write_text, read_jsonl
from progemu.utils.config import config_to_dict, save_config

__all__ = ["CurationResult", "run_curation", "pair_json", "load_studies", "STATE_DIR"]

log = logging.getLogger(__name__)
STATE_DIR = ".curate"
JOURNAL = "journal.jsonl"


@dataclasses.dataclass
class CurationResult:
    """What a run produced: kept pairs, skipped records, counts after each step."""

    out: Path
    pairs: list[Pair]
    skipped: list[Skip]
    counts: "OrderedDict[str, int]"
    seconds: float


def load_studies(config: CurateConfig):
    from progemu.data.chexpert_plus import load_chexpert_plus
    from progemu.data.mimic import load_mimic

    studies = []
    if config.mimic:
        studies += load_mimic(config.mimic)
    if config.chexpert_plus:
        studies += load_chexpert_plus(config.chexpert_plus)
    if config.limit_patients:
        keep = sorted({(s.source, s.subject_id) for s in studies})[: config.limit_patients]
        wanted = set(keep)
        studies = [s for s in studies if (s.source, s.subject_id) in wanted]
    return studies


def pair_json(candidate: Candidate, annotation, reg_metric: dict, kept_index: dict[str, int]) -> dict[str, Any]:
    """The official ICG-CXR pair JSON (``formats.md`` §3) for one kept pair.

    ``*-study-order``: position in the patient's full series (all studies, 1-based);
    ``*-study-index``: position among the patient's studies that passed selection (1-based).
    """
    prior, followup = candidate.prior, candidate.followup
    demographics = followup.demographics or {}
    return {
        "progression-description": annotation.prompt,
        "changes-of-findings": annotation.interpretation,
        "comment": annotation.to_comment(),
        "reference-report": {"findings": prior.findings, "impression": prior.impression},
        "followup-report": {"findings": followup.findings, "impression": followup.impression},
        "time-interval": candidate.interval_days,
        "view": "PA",
        "subject-id": candidate.subject_id,
        "reference-study-id": prior.study_id,
        "followup-study-id": followup.study_id,
        "reference-dicom-id": candidate.prior_image.image_id,
        "followup-dicom-id": candidate.followup_image.image_id,
        "reference-study-order": prior.order,
        "followup-study-order": followup.order,
        "reference-study-index": kept_index.get(prior.key),
        "followup-study-index": kept_index.get(followup.key),
        "reference-narrative": prior.narrative,
        "followup-narrative": followup.narrative,
        "age": demographics.get("age"),
        "sex": demographics.get("sex"),
        "race": demographics.get("race"),
        "ethnicity": demographics.get("ethnicity"),
        "recent_bmi": demographics.get("recent_bmi"),
        "deceased": demographics.get("deceased"),
        "split": candidate.split,
        "reg_metric": reg_metric,
        "reference-diseases": labels_to_json(prior.labels),
        "followup-diseases": labels_to_json(followup.labels),
    }


def _check_resume(config: CurateConfig, out: Path) -> None:
    path = out / "curate_config.json"
    if not path.exists():
        return
    from progemu.utils.identity import StaleOutputError, differences, read_identity

    old = read_identity(path)
    new = config_to_dict(config)
    found = differences({k: old.get(k) for k in OUTPUT_FIELDS}, {k: new.get(k) for k in OUTPUT_FIELDS},
                        names={k: "--" + k.replace("_", "-") for k in OUTPUT_FIELDS})
    if found:
        raise StaleOutputError(f"--out {out}: a dataset made with other settings: {', '.join(found[:4])}"
                               f"{' and more' if len(found) > 4 else ''} (recorded in {path.name}); re-run with the "
                               "same settings to resume, or choose a new --out (or delete this folder) to start again")


def _make_annotator(config: CurateConfig, out: Path):
    from progemu.curate.annotation import make_annotator

    if config.annotator == "rules":
        return make_annotator("rules", credentialed=config.credentialed)
    if config.annotator == "llm":
        if not config.llm_base_url or not config.llm_model:
            raise ValueError("--annotator llm needs --llm-base-url and --llm-model (an OpenAI-compatible endpoint "
                             "you are allowed to send the reports to; see --help)")
        return make_annotator("llm", base_url=config.llm_base_url, model=config.llm_model,
                              api_key_env=config.llm_api_key_env, api_version=config.llm_api_version,
                              concurrency=config.llm_concurrency,
                              allow_public_api_with_dua=config.allow_public_llm_with_dua,
                              cache_dir=str(out / ".cache" / "llm"), credentialed=config.credentialed)
    raise ValueError(f"unknown annotator {config.annotator!r}; choose 'rules' or 'llm'")


def _study_indices(candidates: list[Candidate]) -> dict[str, int]:
    per_subject: dict[tuple[str, str], set] = {}
    for c in candidates:
        for study in (c.prior, c.followup):
            per_subject.setdefault((c.source, c.subject_id), set()).add((study.order, study.study_id, study.key))
    index = {}
    for items in per_subject.values():
        for position, (_, _, key) in enumerate(sorted(items), start=1):
            index[key] = position
    return index


def run_curation(config: CurateConfig, *, annotator=None, progress: bool = True,
                 echo: Callable[[str], None] = print, debug_sleep_s: float = 0.0) -> CurationResult:
    """Run (or resume) curation into ``config.out``; returns the whole dataset's result.

    ``annotator``: any object with ``annotate(prior, followup, record_id) -> Annotation``
    (default: built from ``config.annotator``). ``debug_sleep_s`` slows each pair down (tests
    use it to kill a run half-way).
    """
    from tqdm import tqdm

    from progemu.curate.annotation import AnnotationError, ReportText

    start = time.perf_counter()
    out = Path(config.out)
    _check_resume(config, out)
    if annotator is None:
        annotator = _make_annotator(config, out)
    studies = load_studies(config)  # before anything is written: bad input leaves no half-made OUT
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "curate_config.json", kind="CurateConfig")
    candidates, skips, counts = select_pairs(studies, max_days=config.max_days, split=config.split,
                                             test_fraction=config.test_fraction, seed=config.seed)
    kept_index = _study_indices(candidates)
    by_id = {c.record_id: c for c in candidates}
    journal_path = out / STATE_DIR / JOURNAL
    done = {entry["record"]: entry for entry in read_jsonl(journal_path) if entry.get("record") in by_id}
    todo = [c for c in candidates if c.record_id not in done]
    if done:
        echo(f"curate: resuming: {len(done)} of {len(candidates)} pairs already finished in {out}")

    def annotate_and_write(candidate: Candidate, images: dict) -> dict:
        if debug_sleep_s:
            time.sleep(debug_sleep_s)
        try:
            annotation = annotator.annotate(ReportText(candidate.prior.findings, candidate.prior.impression),
                                            ReportText(candidate.followup.findings, candidate.followup.impression),
                                            candidate.record_id)
        except AnnotationError as error:
            return {"record": candidate.record_id, "status": "skipped", "stage": "annotation", "reason": str(error)}
        if annotation.confidence < config.min_confidence:
            return {"record": candidate.record_id, "status": "skipped", "stage": "confidence",
                    "reason": f"confidence {annotation.confidence} < --min-confidence {config.min_confidence}"}
        record = pair_json(candidate, annotation, images["reg_metric"], kept_index)
        json_path = write_pair(out, record, images["prior"], images["followup"], source=candidate.source,
                               split=candidate.split)
        pair = Pair(pair_id=candidate.record_id, source=candidate.source, split=candidate.split,
                    subject_id=candidate.subject_id, prior_study_id=candidate.prior.study_id,
                    followup_study_id=candidate.followup.study_id, prior_order=candidate.prior.order,
                    followup_order=candidate.followup.order,
                    prior_image=json_path.with_name(f"{candidate.name}-ref-reg.png"),
                    followup_image=json_path.with_name(f"{candidate.name}-flu-reg.png"),
                    prompt=annotation.prompt, interpretation=annotation.interpretation,
                    confidence=annotation.confidence, time_interval_days=candidate.interval_days,
                    prior_labels=dict(candidate.prior.labels), followup_labels=dict(candidate.followup.labels),
                    json_path=json_path, reg_metric=images["reg_metric"])
        return {"record": candidate.record_id, "status": "kept", "pair": pair.to_manifest(out)}

    workers = max(1, int(config.workers))
    annotation_threads = max(1, int(config.llm_concurrency)) if config.annotator == "llm" else 1
    if workers > 1:
        image_pool = futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=init_worker)
    else:
        init_worker()
        image_pool = futures.ThreadPoolExecutor(1)
    annotation_pool = futures.ThreadPoolExecutor(annotation_threads, thread_name_prefix="annotate")
    bar = tqdm(total=len(candidates), initial=len(done), desc="curate pairs", unit="pair", disable=not progress)
    pending_images: dict[futures.Future, Candidate] = {}
    pending_annotations: dict[futures.Future, Candidate] = {}
    queue = iter(todo)
    exhausted = False

    def finish(entry: dict) -> None:
        append_jsonl(journal_path, entry)  # after the pair's files: a journal line implies complete files
        done[entry["record"]] = entry
        bar.update(1)

    try:
        while True:
            while not exhausted and len(pending_images) < 2 * workers and len(pending_annotations) < 2 * annotation_threads + 2:
                candidate = next(queue, None)
                if candidate is None:
                    exhausted = True
                    break
                job = image_job(candidate.record_id, candidate.prior_image.path, candidate.followup_image.path,
                                image_size=config.image_size, resize_mode=config.resize_mode,
                                quality=config.quality, registration=config.registration)
                pending_images[image_pool.submit(process_pair_images, job)] = candidate
            if not pending_images and not pending_annotations:
                break
            finished, _ = futures.wait(list(pending_images) + list(pending_annotations),
                                       return_when=futures.FIRST_COMPLETED)
            for future in finished:
                if future in pending_images:
                    candidate = pending_images.pop(future)
                    result = future.result()
                    if not result["ok"]:
                        finish({"record": candidate.record_id, "status": "skipped", "stage": result["stage"],
                                "reason": result["reason"]})
                        continue
                    pending_annotations[annotation_pool.submit(annotate_and_write, candidate, result)] = candidate
                else:
                    pending_annotations.pop(future)
                    finish(future.result())
    finally:
        bar.close()
        image_pool.shutdown(wait=True, cancel_futures=True)
        annotation_pool.shutdown(wait=True, cancel_futures=True)

    return _finalise(config, out, candidates, done, skips, counts, annotator, time.perf_counter() - start, echo)


def _finalise(config, out, candidates, done, skips, counts, annotator, seconds, echo) -> CurationResult:
    from progemu.curate.card import write_dataset_card

    entries = [done[c.record_id] for c in candidates if c.record_id in done]
    pairs = [Pair.from_manifest(e["pair"], out) for e in entries if e["status"] == "kept"]
    pair_skips = [Skip(e["record"], e["stage"], e["reason"]) for e in entries if e["status"] == "skipped"]
    all_skips = skips + pair_skips
    stage_counts = Counter(s.stage for s in pair_skips)
    left = len(candidates)
    for stage, label in (("image", "pairs with readable, good-quality images"),
                         ("registration", "pairs aligned after registration"),
                         ("annotation", "pairs annotated"),
                         ("confidence", f"pairs with confidence >= {config.min_confidence}")):
        left -= stage_counts.get(stage, 0)
        counts[label] = left
    counts["pairs written"] = len(pairs)
    counts["patients in the dataset"] = len({(p.source, p.subject_id) for p in pairs})
    for split in sorted({p.split for p in pairs}):
        counts[f"pairs in split {split}"] = sum(1 for p in pairs if p.split == split)
    write_manifest(out, pairs)
    lines = [json.dumps(dataclasses.asdict(s), ensure_ascii=False) for s in sorted(all_skips, key=lambda s: (s.stage, s.record))]
    atomic_write_text(out / "skipped.jsonl", "\n".join(lines) + ("\n" if lines else ""))
    annotator_name = f"{getattr(annotator, 'name', type(annotator).__name__)} {getattr(annotator, 'version', '')}".strip()
    write_dataset_card(out, config, counts, pairs, all_skips, annotator_name, seconds)
    echo(summary_text(counts, all_skips, out))
    return CurationResult(out, pairs, all_skips, counts, seconds)


def summary_text(counts, skips: list[Skip], out: Path, per_group: int = 10) -> str:
    """Closing summary: the counts, then skipped records grouped by stage, each named."""
    lines = [f"curate: {counts.get('pairs written', 0)} pairs from {counts.get('patients in the dataset', 0)} patients in {out}"]
    groups: dict[str, list[Skip]] = {}
    for skip in skips:
        groups.setdefault(skip.stage, []).append(skip)
    if groups:
        lines.append(f"skipped {len(skips)} records (all in {out / 'skipped.jsonl'}):")
    for stage, items in sorted(groups.items()):
        lines.append(f"  {stage}: {len(items)}")
        for skip in sorted(items, key=lambda s: s.record)[:per_group]:
            lines.append(f"    {skip.record}: {skip.reason}")
        if len(items) > per_group:
            lines.append(f"    ... and {len(items) - per_group} more")
    return "\n".join(lines)
