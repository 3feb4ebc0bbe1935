"""Radiology reports for the synthetic world, in raw MIMIC-CXR and CheXpert Plus layouts.

Every sentence is produced from a phrase table below together with the CheXpert
labels it asserts, so the label CSVs agree with the text by construction (and a
test re-checks it for every study). Phrasing follows real radiology usage
("small left pleural effusion", "blunting of the left costophrenic angle",
"moderate cardiomegaly", "right lower lobe consolidation", "small right apical
pneumothorax", "18 mm nodule in the right upper lobe", "right IJ central venous
catheter terminates in the SVC", "no pneumothorax").

Tables (for the rule-based parser of :mod:`progemu.curate`):

- :data:`SEVERITY_TERMS` kind -> grade -> the adjective used;
- :data:`POSITIVE_TEMPLATES` kind -> templates for a present finding
  (fields ``{Sev}``/``{sev}`` severity adjective, ``{side}`` left/right,
  ``{Side}``, ``{lobe}`` e.g. "right lower lobe", ``{size}`` "18 mm"/"4.2 cm",
  ``{lesion}`` nodule/mass, ``{comp}`` the comparison clause);
- :data:`COMPARISON` change -> clauses ("new", "slightly increased", "increased",
  "slightly decreased", "decreased", "unchanged") appended to a positive sentence;
- :data:`RESOLVED_TEMPLATES` kind -> sentences for a finding present before and
  gone now (they make the label 0);
- :data:`NEGATIVE_TEMPLATES` -> sentences that deny a finding (label 0).

Label semantics follow the CheXpert labeler: 1.0 positive, 0.0 negative, -1.0
uncertain ("concerning for pneumonia"), blank when not mentioned; positive wins
over uncertain over negative when a label is asserted twice. "No Finding" is 1.0
when no label other than Support Devices is positive or uncertain.
"""
from __future__ import annotations

import dataclasses
import textwrap

import numpy as np

from progemu.data.labels import CHEXPERT_LABELS

from .findings import FINDING_KEYS, StudyState, key_kind, key_side

__all__ = [
    "SEVERITY_TERMS",
    "POSITIVE_TEMPLATES",
    "COMPARISON",
    "RESOLVED_TEMPLATES",
    "NEGATIVE_TEMPLATES",
    "DEVICE_SENTENCES",
    "Sentence",
    "Report",
    "write_study_report",
    "merge_labels",
    "mimic_text",
    "chexpert_plus_text",
    "change_of",
]

SEVERITY_TERMS: dict[str, dict[int, str]] = {
    "pleural_effusion": {1: "small", 2: "moderate", 3: "large"},
    "cardiomegaly": {1: "mild", 2: "moderate", 3: "severe"},
    "edema": {1: "mild", 2: "moderate", 3: "severe"},
    "consolidation": {1: "patchy", 2: "moderate", 3: "extensive"},
    "pneumothorax": {1: "small", 2: "moderate", 3: "large"},
    "atelectasis": {1: "mild", 2: "moderate", 3: "severe"},
    "lung_lesion": {1: "small", 2: "moderate", 3: "large"},
}

LOBE_NAMES = {("right", "upper"): "right upper lobe", ("right", "middle"): "right middle lobe",
              ("right", "lower"): "right lower lobe", ("left", "upper"): "left upper lobe",
              ("left", "lower"): "left lower lobe", ("left", "middle"): "lingula"}

#: kind -> list of (template, extra labels) for a present finding; the kind's own label is always 1.0
POSITIVE_TEMPLATES: dict[str, list[tuple[str, dict[str, float]]]] = {
    "pleural_effusion": [
        ("{Sev} {side} pleural effusion{comp}.", {}),
        ("There is a {sev} {side} pleural effusion{comp}.", {}),
        ("{Sev} {side} pleural effusion with blunting of the {side} costophrenic angle{comp}.", {}),
    ],
    "cardiomegaly": [
        ("{Sev} cardiomegaly{comp}.", {}),
        ("There is {sev} cardiomegaly{comp}.", {}),
        ("{Sev} enlargement of the cardiac silhouette{comp}.", {}),
    ],
    "edema": [
        ("{Sev} pulmonary edema{comp}.", {}),
        ("There is {sev} pulmonary edema with perihilar haziness{comp}.", {}),
        ("{Sev} interstitial pulmonary edema{comp}.", {}),
    ],
    "consolidation": [
        ("{Sev} {lobe} consolidation{comp}.", {}),
        ("There is {sev} consolidation in the {lobe}{comp}.", {}),
        ("{Sev} {lobe} consolidation{comp}, concerning for pneumonia.", {"Pneumonia": -1.0}),
        ("{Sev} {lobe} opacity consistent with consolidation{comp}.", {"Lung Opacity": 1.0}),
    ],
    "pneumothorax": [
        ("{Sev} {side} apical pneumothorax{comp}.", {}),
        ("There is a {sev} {side} pneumothorax{comp}, with the pleural line seen at the apex.", {}),
    ],
    "atelectasis": [
        ("{Sev} {side} basilar atelectasis{comp}.", {}),
        ("{Sev} plate-like atelectasis at the {side} lung base{comp}.", {}),
        ("Linear opacity at the {side} lung base consistent with {sev} atelectasis{comp}.", {"Lung Opacity": 1.0}),
    ],
    "lung_lesion": [
        ("{size} {lesion} in the {lobe}{comp}.", {}),
        ("There is a {size} {lesion} in the {lobe}{comp}.", {}),
    ],
}

#: change -> comparison clauses appended to a positive sentence (leading space/comma included)
COMPARISON: dict[str, list[str]] = {
    "new": [", which is new", ", new since the prior study", " (new)"],
    "slightly increased": [", slightly increased from the prior study", ", which has slightly increased"],
    "increased": [", increased from the prior study", ", which has increased since the prior exam"],
    "slightly decreased": [", slightly decreased from the prior study", ", which has slightly decreased"],
    "decreased": [", decreased from the prior study", ", which has decreased since the prior exam"],
    "unchanged": [", unchanged from the prior study", ", unchanged", ", stable compared to the prior exam"],
    "first": [""],
}

#: kind -> sentences for a finding that resolved (prior present, now absent): label 0.0
RESOLVED_TEMPLATES: dict[str, list[str]] = {
    "pleural_effusion": ["The previously seen {side} pleural effusion has resolved.",
                         "Interval resolution of the {side} pleural effusion."],
    "cardiomegaly": ["The heart size has returned to normal."],
    "edema": ["Pulmonary edema has resolved.", "Interval resolution of pulmonary edema."],
    "consolidation": ["The previously seen {lobe} consolidation has resolved.",
                      "Interval resolution of the {lobe} consolidation."],
    "pneumothorax": ["The previously seen {side} pneumothorax has resolved.",
                     "Interval resolution of the {side} pneumothorax."],
    "atelectasis": ["The previously seen {side} basilar atelectasis has resolved."],
    "lung_lesion": ["The previously seen {lobe} {lesion} has resolved."],
    "support_devices": ["The support devices have been removed."],
}

#: kind -> (sentence, labels it sets) for findings absent now and before
NEGATIVE_TEMPLATES: dict[str, list[tuple[str, dict[str, float]]]] = {
    "pleural_effusion": [("No pleural effusion.", {"Pleural Effusion": 0.0}),
                         ("There is no pleural effusion.", {"Pleural Effusion": 0.0})],
    "pneumothorax": [("No pneumothorax.", {"Pneumothorax": 0.0}),
                     ("There is no pneumothorax.", {"Pneumothorax": 0.0})],
    "consolidation": [("No focal consolidation.", {"Consolidation": 0.0}),
                      ("There is no focal consolidation.", {"Consolidation": 0.0})],
    "edema": [("No pulmonary edema.", {"Edema": 0.0}),
              ("There is no evidence of pulmonary edema.", {"Edema": 0.0})],
    "cardiomegaly": [("The heart size is normal.", {"Cardiomegaly": 0.0}),
                     ("Heart size is normal.", {"Cardiomegaly": 0.0}),
                     ("The cardiomediastinal silhouette is normal.", {"Enlarged Cardiomediastinum": 0.0})],
    "lung_lesion": [("No suspicious pulmonary nodules.", {"Lung Lesion": 0.0})],
    "atelectasis": [("No atelectasis.", {"Atelectasis": 0.0})],
    "fracture": [("No displaced rib fractures.", {"Fracture": 0.0})],
}

#: combined negation sentences: (kinds they cover, sentence, labels)
COMBINED_NEGATIVES: list[tuple[tuple[str, ...], str, dict[str, float]]] = [
    (("pleural_effusion", "pneumothorax"), "No pleural effusion or pneumothorax.",
     {"Pleural Effusion": 0.0, "Pneumothorax": 0.0}),
    (("consolidation", "pleural_effusion", "pneumothorax"), "No focal consolidation, pleural effusion or pneumothorax.",
     {"Consolidation": 0.0, "Pleural Effusion": 0.0, "Pneumothorax": 0.0}),
    (("pleural_effusion", "pneumothorax"), "There is no pleural effusion or pneumothorax.",
     {"Pleural Effusion": 0.0, "Pneumothorax": 0.0}),
]

#: device kind -> sentences (label Support Devices 1.0)
DEVICE_SENTENCES: dict[str, list[str]] = {
    "ett": ["Endotracheal tube terminates approximately 4 cm above the carina.",
            "Endotracheal tube tip is 4.5 cm above the carina."],
    "cvc": ["Right IJ central venous catheter terminates in the SVC.",
            "Right internal jugular central venous catheter tip is in the mid SVC."],
    "ngt": ["Nasogastric tube courses below the diaphragm with the tip in the stomach.",
            "Enteric tube terminates in the stomach."],
    "pacemaker": ["Left pectoral pacemaker with leads in the right atrium and right ventricle.",
                  "Left-sided pacemaker is present with leads terminating in the right atrium and right ventricle."],
}

INDICATIONS = ["shortness of breath", "cough and fever", "chest pain", "evaluate for pneumonia",
               "dyspnea", "follow-up", "hypoxia", "evaluate for interval change", "pre-operative evaluation"]
NO_ACUTE = ["No acute cardiopulmonary process.", "No acute intrathoracic process.",
            "No acute cardiopulmonary abnormality."]


@dataclasses.dataclass
class Sentence:
    text: str
    labels: dict[str, float]
    key: str | None = None  # finding key it describes (None for negatives / boilerplate)


@dataclasses.dataclass
class Report:
    findings: str  # FINDINGS section text ("" when empty / absent)
    impression: str  # IMPRESSION section text ("" when absent)
    layout: str  # "standard" | "combined" | "empty_findings" | "no_impression" | "addendum"
    labels: dict[str, float | None]  # the 14 CheXpert labels (None = blank)
    mimic: str  # raw MIMIC-CXR report text
    chexpert_plus: dict[str, str]  # CheXpert Plus report columns


def change_of(prior_grade: int | None, grade: int) -> str:
    """Comparison word for a present finding: first / new / (slightly) increased / decreased / unchanged."""
    if prior_grade is None:
        return "first"
    if prior_grade == 0:
        return "new"
    if grade > prior_grade:
        return "slightly increased" if grade - prior_grade == 1 else "increased"
    if grade < prior_grade:
        return "slightly decreased" if prior_grade - grade == 1 else "decreased"
    return "unchanged"


def merge_labels(sentences: list[Sentence]) -> dict[str, float | None]:
    """Combine per-sentence labels: positive > uncertain > negative > blank, then No Finding."""
    rank = {1.0: 3, -1.0: 2, 0.0: 1}
    labels: dict[str, float | None] = {name: None for name in CHEXPERT_LABELS}
    for sentence in sentences:
        for name, value in sentence.labels.items():
            if labels[name] is None or rank[value] > rank[labels[name]]:
                labels[name] = value
    pathology = [n for n in CHEXPERT_LABELS if n not in ("No Finding", "Support Devices")]
    if not any(labels[n] in (1.0, -1.0) for n in pathology):
        labels["No Finding"] = 1.0
    return labels


def _lesion_words(size_mm: float) -> tuple[str, str]:
    if size_mm >= 30:
        return f"{size_mm / 10:.1f} cm", "mass"
    return f"{int(round(size_mm))} mm", "nodule"


def _fill(template: str, key: str, finding, comp: str) -> str:
    kind = key_kind(key)
    side = key_side(key) or ""
    sev = SEVERITY_TERMS.get(kind, {}).get(finding.severity, "")
    lobe = LOBE_NAMES.get((side, finding.location), f"{side} lung")
    size, lesion = _lesion_words(finding.size_mm or 10.0)
    text = template.format(sev=sev, Sev=sev.capitalize(), side=side, Side=side.capitalize(), lobe=lobe,
                           size=size, lesion=lesion, comp=comp)
    return text[0].upper() + text[1:]


def _positive(key: str, finding, prior, rng: np.random.Generator) -> Sentence:
    kind = key_kind(key)
    from .findings import FINDING_LABEL

    if kind == "support_devices":
        kinds = [k for k in finding.location.split("+") if k]
        before = set(prior.location.split("+")) if prior is not None and prior.present else set()
        parts = []
        for k in kinds:
            text = str(rng.choice(DEVICE_SENTENCES[k]))
            if prior is not None and k not in before:
                text = "New " + text[0].lower() + text[1:]
            parts.append(text)
        return Sentence("  ".join(parts), {"Support Devices": 1.0}, key)
    prior_grade = None if prior is None else prior.severity
    change = change_of(prior_grade, finding.severity)
    if kind == "lung_lesion" and prior is not None and prior.present:
        if finding.size_mm and prior.size_mm and finding.size_mm > prior.size_mm * 1.05:
            change = "increased"
        elif finding.size_mm and prior.size_mm and finding.size_mm < prior.size_mm * 0.95:
            change = "decreased"
        else:
            change = "unchanged"
    comp = str(rng.choice(COMPARISON[change]))
    template, extra = POSITIVE_TEMPLATES[kind][int(rng.integers(len(POSITIVE_TEMPLATES[kind])))]
    labels = {FINDING_LABEL[kind]: 1.0, **extra}
    return Sentence(_fill(template, key, finding, comp), labels, key)


def study_sentences(state: StudyState, prior: StudyState | None, rng: np.random.Generator) -> tuple[list[Sentence], list[Sentence]]:
    """(findings sentences, impression sentences) for one study, with their labels."""
    from .findings import FINDING_LABEL

    findings: list[Sentence] = []
    for key in FINDING_KEYS:
        f = state[key]
        before = None if prior is None else prior[key]
        if f.present:
            findings.append(_positive(key, f, before, rng))
        elif before is not None and before.present:
            kind = key_kind(key)
            text = _fill(str(rng.choice(RESOLVED_TEMPLATES[kind])), key, before, "")
            findings.append(Sentence(text, {FINDING_LABEL[kind]: 0.0}, key))
    # negations for whole kinds that are absent now and were absent before
    absent = [k for k in NEGATIVE_TEMPLATES if k == "fracture" or not any(
        state[key].present or (prior is not None and prior[key].present) for key in FINDING_KEYS if key_kind(key) == k)]
    negatives: list[Sentence] = []
    combos = [c for c in COMBINED_NEGATIVES if all(k in absent for k in c[0])]
    used: set[str] = set()
    if combos and rng.random() < 0.6:
        kinds, text, labels = combos[int(rng.integers(len(combos)))]
        negatives.append(Sentence(text, dict(labels)))
        used.update(kinds)
    for kind in absent:
        if kind in used or rng.random() > (0.55 if kind in ("pneumothorax", "pleural_effusion", "cardiomegaly") else 0.2):
            continue
        text, labels = NEGATIVE_TEMPLATES[kind][int(rng.integers(len(NEGATIVE_TEMPLATES[kind])))]
        negatives.append(Sentence(text, dict(labels)))
    order = rng.permutation(len(findings)).tolist() if rng.random() < 0.3 else list(range(len(findings)))
    body = [findings[i] for i in order] + negatives
    if rng.random() < 0.5:
        rng.shuffle(body)
    # impression: the positive / changed findings again, worded afresh (devices included, so that a
    # report with an empty FINDINGS section still names every finding)
    impression = []
    for sentence in findings:
        key = sentence.key
        if state[key].present and key != "support_devices":
            impression.append(_positive(key, state[key], None if prior is None else prior[key], rng))
        else:
            impression.append(Sentence(sentence.text, dict(sentence.labels), key))
    if not impression:
        impression = [Sentence(str(rng.choice(NO_ACUTE)), {})]
    return body, impression


def _join(sentences: list[Sentence]) -> str:
    # MIMIC radiologists separate sentences with two spaces
    return "  ".join(s.text for s in sentences)


def _wrap(text: str) -> list[str]:
    """79-column wrapping with the MIMIC leading space."""
    if not text:
        return []
    lines = textwrap.wrap(text, width=78, break_long_words=False, break_on_hyphens=False, drop_whitespace=True,
                          replace_whitespace=False)
    return [" " + line for line in lines]


def mimic_text(exam: str, technique: str, indication: str, comparison: str, findings: str, impression: str,
               layout: str, addendum: str = "") -> str:
    """Raw MIMIC-CXR report text in the layout named by ``layout``."""
    lines = [" " * 33 + "FINAL REPORT"]
    if layout == "addendum":
        lines += [" ADDENDUM:  " + addendum, " ", " " + "_" * 78, " "]
    for header, value in (("EXAMINATION", exam), ("INDICATION", indication), ("TECHNIQUE", technique),
                          ("COMPARISON", comparison)):
        lines += _wrap(f"{header}:  {value}") + [" "]
    if layout == "combined":
        lines += [" FINDINGS/IMPRESSION: ", " "] + _wrap(findings)
    else:
        lines += [" FINDINGS: ", " "] + _wrap(findings)
        if layout != "no_impression":
            lines += [" ", " IMPRESSION: ", " "] + _wrap(impression)
    return "\n".join(lines) + "\n"


def chexpert_plus_text(history: str, comparison: str, technique: str, findings: str, impression: str) -> dict[str, str]:
    """CheXpert Plus report columns (sections as the CSV has them; missing ones are "")."""
    impression_numbered = impression
    parts = ["NARRATIVE:", "RADIOGRAPHIC EXAMINATION OF THE CHEST", "",
             f"CLINICAL HISTORY: {history}", "", f"COMPARISON: {comparison}", "", f"TECHNIQUE: {technique}", ""]
    if findings:
        parts += ["FINDINGS:", findings, ""]
    if impression:
        parts += ["IMPRESSION:", impression_numbered, ""]
    report = "\n".join(parts).rstrip() + "\n"
    return {
        "report": report,
        "section_narrative": "RADIOGRAPHIC EXAMINATION OF THE CHEST",
        "section_clinical_history": history,
        "section_history": "",
        "section_comparison": comparison,
        "section_technique": technique,
        "section_procedure_comments": "",
        "section_findings": findings,
        "section_impression": impression_numbered,
        "section_end_of_impression": "",
        "section_summary": "",
        "section_accession_number": "",
    }


def write_study_report(state: StudyState, prior: StudyState | None, view: str, sex: str, age: int,
                       rng: np.random.Generator) -> Report:
    """Write the report of one study (both dataset layouts) and its CheXpert labels.

    Labels are computed from exactly the sentences that appear in the text: when
    the layout drops the IMPRESSION, labels come from FINDINGS; when FINDINGS is
    empty, from IMPRESSION.
    """
    body, impression = study_sentences(state, prior, rng)
    r = rng.random()
    layout = ("standard" if r < 0.72 else "combined" if r < 0.80 else "empty_findings" if r < 0.85
              else "no_impression" if r < 0.93 else "addendum")
    findings_text = _join(body)
    impression_text = _join(impression)
    shown = body + impression
    if layout == "combined":
        findings_text, impression_text, shown = _join(body), "", body
    elif layout == "empty_findings":
        findings_text, shown = "", impression
    elif layout == "no_impression":
        impression_text, shown = "", body
    labels = merge_labels(shown)
    woman = "woman" if sex == "F" else "man"
    reason = str(rng.choice(INDICATIONS))
    indication = f"___ year old {woman} with {reason}  // {reason}"
    exam = "CHEST (PA AND LAT)" if view == "PA" else "CHEST (PORTABLE AP)"
    technique = "Chest PA and lateral" if view == "PA" else "Portable AP chest radiograph and lateral view"
    comparison = "None." if prior is None else str(rng.choice(["___", "Chest radiograph from ___.", "___."]))
    addendum = "Findings were discussed with Dr. ___ by telephone at ___ on ___."
    mimic = mimic_text(exam, technique, indication, comparison, findings_text, impression_text, layout, addendum)
    history = f"{age} years of age, {'female' if sex == 'F' else 'male'}, {reason}."
    plus = chexpert_plus_text(history, "None." if prior is None else "Prior radiograph.",
                              "PA and lateral views of the chest." if view == "PA" else "Portable AP and lateral views of the chest.",
                              findings_text if layout != "combined" else findings_text, impression_text)
    return Report(findings_text, impression_text, layout, labels, mimic, plus)
