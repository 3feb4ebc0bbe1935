"""Report pairs of the synthetic world with their true changes, for the rules-annotator tests and bench.

Uses ``progemu.synth.evolution.simulate_patient`` and ``progemu.synth.reports.write_study_report``
directly (no images), so thousands of pairs take seconds. A *true change* is one finding key of
``progemu.synth.findings.FINDING_KEYS`` whose state differs between prior and follow-up
(``new`` / ``increased`` / ``decreased`` / ``resolved``; devices: ``placed`` / ``removed`` per device kind).
"""
from __future__ import annotations

import dataclasses

import numpy as np

#: synth device kind -> the device name the rules parser gives it
DEVICE_NAME = {"ett": "endotracheal tube", "cvc": "central venous catheter", "ngt": "enteric tube", "pacemaker": "pacemaker"}


@dataclasses.dataclass
class TrueChange:
    finding: str  # CheXpert label
    side: str | None
    kind: str  # new | increased | decreased | resolved | unchanged | placed | removed
    device: str | None = None


@dataclasses.dataclass
class SynthPair:
    prior_findings: str
    prior_impression: str
    followup_findings: str
    followup_impression: str
    changes: list[TrueChange]
    layout: str


def true_changes(prior, current) -> list[TrueChange]:
    from progemu.synth.findings import FINDING_KEYS, FINDING_LABEL, key_kind, key_side

    out: list[TrueChange] = []
    for key in FINDING_KEYS:
        before, after = prior[key], current[key]
        label, side = FINDING_LABEL[key_kind(key)], key_side(key)
        if key == "support_devices":
            was = {k for k in before.location.split("+") if k} if before.present else set()
            now = {k for k in after.location.split("+") if k} if after.present else set()
            out += [TrueChange(label, None, "placed", DEVICE_NAME[k]) for k in sorted(now - was)]
            out += [TrueChange(label, None, "removed", DEVICE_NAME[k]) for k in sorted(was - now)]
            out += [TrueChange(label, None, "unchanged", DEVICE_NAME[k]) for k in sorted(was & now)]
            continue
        if not before.present and not after.present:
            continue
        if not before.present:
            kind = "new"
        elif not after.present:
            kind = "resolved"
        elif key_kind(key) == "lung_lesion":
            # the synth reports compare lesions by size (5 % tolerance)
            kind = ("increased" if after.size_mm > before.size_mm * 1.05 else
                    "decreased" if after.size_mm < before.size_mm * 0.95 else "unchanged")
        else:
            kind = ("increased" if after.severity > before.severity else
                    "decreased" if after.severity < before.severity else "unchanged")
        out.append(TrueChange(label, side, kind))
    return out


def synth_pairs(patients: int, seed: int = 0) -> list[SynthPair]:
    from progemu.synth.evolution import simulate_patient
    from progemu.synth.reports import write_study_report

    pairs: list[SynthPair] = []
    for index in range(patients):
        rng = np.random.default_rng([seed, index])
        anatomy, studies = simulate_patient(rng)
        previous, previous_report = None, None
        for study in studies:
            report = write_study_report(study.state, previous.state if previous else None, study.pose.view,
                                        anatomy.sex, anatomy.age, rng)
            if previous is not None:
                pairs.append(SynthPair(previous_report.findings, previous_report.impression, report.findings,
                                       report.impression, true_changes(previous.state, study.state), report.layout))
            previous, previous_report = study, report
    return pairs


def matches(true: TrueChange, change) -> bool:
    """Does a rules-annotator ``Change`` describe ``true``? (finding, side, direction)"""
    if change.finding != true.finding and not (true.finding == "Consolidation" and change.finding in ("Pneumonia", "Lung Opacity")):
        return False
    if true.device is not None and change.device != true.device:
        return False
    if true.side is not None and change.side not in (true.side, None, "bilateral"):
        return False
    return change.kind == true.kind
