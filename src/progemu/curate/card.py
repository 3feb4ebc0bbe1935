"""``dataset_card.md``: what a curated ICG-CXR dataset contains and how it was made."""
from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path

from progemu.utils.atomic import atomic_write_text

__all__ = ["write_dataset_card"]


def _mean(values) -> str:
    values = [float(v) for v in values if v is not None]
    return f"{statistics.fmean(values):.3f}" if values else "n/a"


def _third_party_notices(config) -> list[str]:
    """The NOTICE of a source folder's world (the synthetic world on real anatomy ships one), quoted."""
    notices = []
    for path in (config.mimic, config.chexpert_plus):
        notice = Path(path).parent / "NOTICE" if path else None
        if notice is not None and notice.is_file() and notice not in notices:
            notices.append(notice)
    lines = []
    for notice in notices:
        lines += ["## Third-party images and attribution", "", f"From `{notice}`:", "", "```",
                  notice.read_text(encoding="utf-8").rstrip(), "```", ""]
    return lines


def write_dataset_card(out: Path, config, counts, pairs, skips, annotator: str, seconds: float) -> Path:
    """Write the card (counts after every filter step, settings, registration quality)."""
    from progemu import __version__

    sources = ", ".join(f"{name} ({path})" for name, path in (("MIMIC-CXR-JPG", config.mimic),
                                                             ("CheXpert Plus", config.chexpert_plus)) if path)
    lines = [
        "# ICG-CXR dataset card",
        "",
        f"Built by `progemu curate` (progemu {__version__}) from {sources or 'no source'} in {seconds:.0f} s.",
        "Layout and pair-JSON keys: the official ICG-CXR release (`progression-description` = prompt,",
        "`changes-of-findings` = interpretation, `comment.confidence` 1-5). `manifest.jsonl` lists every pair;",
        "`skipped.jsonl` names every record left out and why; settings are in `curate_config.json`.",
        "",
        "## Count left after every step",
        "",
        "| step | count |",
        "| --- | ---: |",
    ]
    lines += [f"| {step} | {value} |" for step, value in counts.items()]
    registered = [p.reg_metric for p in pairs if isinstance(p.reg_metric, dict)]
    confidences = Counter(p.confidence for p in pairs)
    intervals = [p.time_interval_days for p in pairs if p.time_interval_days is not None]
    lines += [
        "",
        "## How pairs were made",
        "",
        "- one frontal PA image per study (most pixels, then smallest image id); studies with an empty findings or",
        "  impression section dropped (MIMIC-CXR sections by the official MIMIC-CXR rules);",
        f"- consecutive kept studies of one patient, at most {config.max_days:g} days apart by StudyDate+StudyTime "
        "(CheXpert Plus: by report order, interval null);",
        f"- images: black border removed, resized to {config.image_size} px ({config.resize_mode}); the prior registered "
        "onto the follow-up with SimpleITK (rigid then affine, correlation metric, multi-resolution);",
        f"  rejected when NCC after < {config.registration.min_ncc} or SSIM after < {config.registration.min_ssim};",
        f"- annotation: {annotator}; pairs with confidence < {config.min_confidence} dropped;",
        f"- split: {config.split}" + (f" (patient hash, test fraction {config.test_fraction:g}, seed {config.seed}; "
                                        "a source's `split_groups.csv` groups patients that must share a split)"
                                        if config.split == "hash" else " (the source dataset's split)") + ".",
        "",
        "## Registration quality (`reg_metric`: NCC and SSIM of prior vs follow-up, before / after)",
        "",
        f"- pairs registered: {sum(1 for m in registered if m.get('registered'))} of {len(registered)}",
        f"- mean NCC before {_mean(m.get('ncc_before') for m in registered)}, after {_mean(m.get('ncc_after') for m in registered)}",
        f"- mean SSIM before {_mean(m.get('ssim_before') for m in registered)}, after {_mean(m.get('ssim_after') for m in registered)}",
        "",
        "## Annotation confidence",
        "",
        "| confidence | pairs |",
        "| ---: | ---: |",
    ]
    lines += [f"| {value} | {confidences[value]} |" for value in sorted(k for k in confidences if k is not None)]
    lines += [
        "",
        f"Time interval (dated pairs): mean {_mean(intervals)} days over {len(intervals)} pairs.",
        "",
        "## Skipped records by step",
        "",
        "| step | records |",
        "| --- | ---: |",
    ]
    for stage, number in sorted(Counter(s.stage for s in skips).items()):
        lines.append(f"| {stage} | {number} |")
    lines += ["", "Report text comes from credentialed data: share this dataset only under the source licences.", ""]
    lines += _third_party_notices(config)
    return atomic_write_text(Path(out) / "dataset_card.md", "\n".join(lines))
