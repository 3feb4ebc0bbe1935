"""Wording of the rules annotator: progression items (:class:`~progemu.curate.annotate_rules.Change`) to text.

The **prompt** is a progression summary in the style of the ICG-CXR prompts ("New small left pleural
effusion. Moderate cardiomegaly is unchanged."); the **interpretation** says, for each item, where the
change is on the radiograph and what it looks like ("The left costophrenic angle, previously sharp, is
now blunted, indicating a new small left pleural effusion."). One fixed template per (finding, change):
the interpretations are the model's text-generation targets, so consistent wording matters more than
variety. Pure functions.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for annotations: annotate_rules imports this module
    from progemu.curate.annotate_rules import Change

__all__ = ["render_prompt", "render_interpretation"]

_NOUN = {
    "Pleural Effusion": "pleural effusion", "Pneumothorax": "pneumothorax", "Cardiomegaly": "cardiomegaly",
    "Edema": "pulmonary edema", "Consolidation": "consolidation", "Pneumonia": "pneumonia", "Atelectasis": "atelectasis",
    "Lung Opacity": "opacity", "Lung Lesion": "nodule", "Fracture": "rib fracture",
    "Enlarged Cardiomediastinum": "widening of the cardiomediastinal silhouette", "Pleural Other": "pleural thickening",
}
_PLURAL = {"pleural effusion": "pleural effusions", "pneumothorax": "pneumothoraces", "opacity": "opacities", "nodule": "nodules", "rib fracture": "rib fractures"}
_PARENCHYMAL = {"Atelectasis", "Consolidation", "Pneumonia", "Lung Opacity", "Lung Lesion"}
_IMPROVES = {"Edema", "Pneumonia", "Consolidation", "Atelectasis", "Lung Opacity"}  # "has improved" reads better than "decreased"


def _noun(change: Change) -> str:
    if change.finding == "Support Devices":
        return change.device or "support device"
    if change.finding == "Lung Lesion" and "mass" in change.noun:
        return "mass"
    if change.finding == "Edema" and "congestion" in change.noun:
        return "pulmonary vascular congestion"
    return _NOUN.get(change.finding, change.finding.lower())


def _phrase(change: Change, severity: str | None = None, with_severity: bool = True) -> str:
    """e.g. "small left pleural effusion", "right upper lobe consolidation", "8 mm right upper lobe nodule"."""
    noun = _noun(change)
    words = []
    if with_severity and change.finding == "Lung Lesion" and (change.size_after or change.size_before):
        words.append(f"{_mm(change.size_after or change.size_before)} mm")
    elif with_severity and severity:
        words.append(severity)
    parenchymal = change.finding in _PARENCHYMAL
    if change.side and change.finding not in ("Cardiomegaly", "Edema", "Enlarged Cardiomediastinum", "Support Devices"):
        if parenchymal and change.location in ("base", "apex"):
            # "left basilar atelectasis", "bibasilar opacities", "right apical opacity"
            adjective = "basilar" if change.location == "base" else "apical"
            words.append(f"bi{adjective}" if change.side == "bilateral" else f"{change.side} {adjective}")
        else:
            words.append(change.side)
            if change.location in ("upper lobe", "middle lobe", "lower lobe", "lingula") and change.finding not in ("Pleural Effusion", "Pneumothorax"):
                words.append(change.location)
    if change.side == "bilateral" and noun in _PLURAL:
        noun = _PLURAL[noun]
    words.append(noun)
    return " ".join(words)


def _mm(value: float | None) -> str:
    return f"{value:g}" if value is not None else "?"


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _is_plural(phrase: str) -> bool:
    return phrase.endswith("s") and not phrase.endswith(("thorax", "sis", "mass", "wires")) or phrase.endswith("wires")


def _a(phrase: str) -> str:
    """Indefinite article, none for a plural ("a small effusion", "new bilateral pleural effusions")."""
    if _is_plural(phrase):
        return phrase
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def _prompt_sentence(change: Change) -> str:
    kind = change.kind
    if kind == "new":
        return f"New {_phrase(change, change.severity_after)}."
    if kind == "placed":
        return f"{_cap(_a(change.device or 'support device'))} has been placed."
    if kind in ("removed", "repositioned"):
        return f"The {change.device or 'support device'} has been {kind}."
    if kind == "resolved":
        subject = _phrase(change, with_severity=False)
        return f"{_cap(subject)} {'have' if _is_plural(subject) else 'has'} resolved."
    subject = _phrase(change, with_severity=False)
    verb = "have" if _is_plural(subject) else "has"
    if kind in ("increased", "decreased"):
        word = {"increased": "worsened", "decreased": "improved"}[kind] if change.finding in _IMPROVES else kind
        if change.finding == "Lung Lesion" and change.size_before and change.size_after:
            return f"{_cap(subject)} {verb} {'grown' if kind == 'increased' else 'decreased'} from {_mm(change.size_before)} to {_mm(change.size_after)} mm."
        if change.severity_before and change.severity_after and change.severity_before != change.severity_after:
            return f"{_cap(subject)} {verb} {word} from {change.severity_before} to {change.severity_after}."
        if change.severity_after:
            return f"{_cap(subject)} {verb} {word}, now {change.severity_after}."
        return f"{_cap(subject)} {verb} {word}."
    return ""  # unchanged: merged by render_prompt


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def render_prompt(changes: list[Change]) -> str:
    """Progression summary, e.g. "New small left pleural effusion. Cardiomegaly is unchanged."."""
    sentences = [_prompt_sentence(c) for c in changes if c.kind != "unchanged"]
    stable = [_phrase(c, c.severity_after) if c.finding != "Support Devices" else f"the {c.device}" for c in changes if c.kind == "unchanged"]
    if stable:
        subject = _join(stable)
        plural = len(stable) > 1 or _is_plural(subject)
        sentences.append(f"{_cap(subject)} {'are' if plural else 'is'} unchanged.")
    return " ".join(sentences) if sentences else "No significant interval change."


def _region(change: Change) -> str:
    """Where a parenchymal change is, with its article: "the right lower lobe", "both lung bases"."""
    side = change.side if change.side in ("left", "right") else None
    prefix = f"the {side} " if side else "the "
    location = change.location
    if change.side == "bilateral":
        zone = {"upper lobe": "upper lungs", "middle lobe": "mid lungs", "lower lobe": "lower lungs", "apex": "lung apices"}.get(location or "", "lung bases")
        return f"both {zone}"
    if location in ("upper lobe", "middle lobe", "lower lobe"):
        return prefix + location
    if location == "lingula":
        return "the lingula"
    if location == "retrocardiac":
        return "the retrocardiac left lower lobe"
    if location == "apex":
        return prefix + "lung apex"
    if location in ("perihilar", "hilar", "infrahilar", "suprahilar"):
        return prefix + location + " region"
    return prefix + "lung base"


def _interpretation_sentence(change: Change) -> str:
    kind, finding = change.kind, change.finding
    side = change.side if change.side in ("left", "right") else None
    both = change.side == "bilateral"
    what = _phrase(change, change.severity_after)
    if finding == "Support Devices":
        device = change.device or "support device"
        tip = ""
        if change.tip:
            # "4 cm above the carina" is already a position; "svc" / "stomach" need a preposition
            tip = f", with its tip {change.tip}" if change.tip[:1].isdigit() else f", with its tip projecting over the {change.tip}"
        return {
            "placed": f"{_cap(_a(device))} is now seen{tip}.",
            "removed": f"The {device} seen on the prior radiograph is no longer present.",
            "repositioned": f"The {device} has changed position{tip.replace(', with its tip', ', its tip now')}.",
        }.get(kind, f"The {device} is unchanged in position{tip}.")
    if finding == "Pleural Effusion":
        angle = "both costophrenic angles" if both else f"the {side + ' ' if side else ''}costophrenic angle"
        angle_verb = "are" if both else "is"
        return {
            "new": f"{_cap(angle)}, previously sharp, {angle_verb} now blunted, indicating {_a('new ' + what)}.",
            "increased": f"The fluid blunting {angle} has increased, with a higher meniscus, indicating {_a('larger ' + _phrase(change, with_severity=False))}{_now(change)}.",
            "decreased": f"The fluid blunting {angle} has decreased, with a lower meniscus, indicating {_a('smaller ' + _phrase(change, with_severity=False))}{_now(change)}.",
            "resolved": f"{_cap(angle)} {angle_verb} sharp again, indicating resolution of the {_phrase(change, with_severity=False)}.",
        }.get(kind, f"Blunting of {angle} is unchanged, consistent with {_a('persistent ' + what)}.")
    if finding == "Pneumothorax":
        where = "both lung apices" if both else f"the {side + ' ' if side else ''}lung apex"
        return {
            "new": f"A thin visceral pleural line with no lung markings beyond it has appeared at {where}, indicating {_a('new ' + what)}.",
            "increased": f"The visceral pleural line at {where} has moved further from the chest wall, indicating an enlarging pneumothorax{_now(change)}.",
            "decreased": f"The visceral pleural line at {where} lies closer to the chest wall, indicating a smaller pneumothorax{_now(change)}.",
            "resolved": f"Lung markings again extend to the chest wall at {where}, indicating resolution of the {_phrase(change, with_severity=False)}.",
        }.get(kind, f"The pleural line at {where} is unchanged, consistent with {_a('persistent ' + what)}.")
    if finding == "Cardiomegaly":
        return {
            "new": f"The cardiac silhouette has enlarged, indicating new {what}.",
            "increased": f"The cardiac silhouette has enlarged further{_now(change)}.",
            "decreased": f"The cardiac silhouette is smaller than before{_now(change)}.",
            "resolved": "The cardiac silhouette has returned to normal size.",
        }.get(kind, f"The enlarged cardiac silhouette is unchanged{_now(change)}.")
    if finding == "Edema":
        return {
            "new": f"Hazy perihilar opacities with indistinct pulmonary vessels have appeared, indicating new {what}.",
            "increased": f"The perihilar haziness and vascular indistinctness have increased, indicating worsening pulmonary edema{_now(change)}.",
            "decreased": f"The perihilar haziness has decreased and the pulmonary vessels are sharper, indicating improving pulmonary edema{_now(change)}.",
            "resolved": "The perihilar haziness has cleared and the pulmonary vessels are sharp again, indicating resolution of the pulmonary edema.",
        }.get(kind, "Perihilar haziness with indistinct pulmonary vessels is unchanged.")
    if finding == "Enlarged Cardiomediastinum":
        return {
            "new": "The mediastinal contour has widened.", "increased": "The mediastinal contour has widened further.",
            "decreased": "The mediastinal contour has narrowed.", "resolved": "The mediastinal contour is normal again.",
        }.get(kind, "The widened mediastinal contour is unchanged.")
    if finding == "Fracture":
        ribs = f"the {side + ' ' if side else ''}ribs"
        return {
            "new": f"A cortical discontinuity is now seen in {ribs}, indicating {_a('new ' + _phrase(change, with_severity=False))}.",
            "resolved": f"Callus now bridges the fracture of {ribs}, indicating healing.",
            "decreased": f"Callus is forming at the fracture of {ribs}, indicating healing.",
        }.get(kind, f"The fracture of {ribs} is unchanged.")
    if finding == "Pleural Other":
        wall = "both chest walls" if both else f"the {side + ' ' if side else ''}chest wall"
        return {
            "new": f"Pleural thickening has appeared along {wall}.", "increased": f"Pleural thickening along {wall} has increased.",
            "decreased": f"Pleural thickening along {wall} has decreased.", "resolved": f"Pleural thickening along {wall} is no longer seen.",
        }.get(kind, f"Pleural thickening along {wall} is unchanged.")
    # parenchymal findings: where the opacity is and how it looks
    region = _region(change)
    core = {
        "Consolidation": "dense airspace opacity", "Pneumonia": "patchy airspace opacity",
        "Atelectasis": "linear, band-like opacity", "Lung Opacity": "airspace opacity", "Lung Lesion": "round nodular opacity",
    }.get(finding, "opacity")
    plain = _phrase(change, with_severity=False)
    if finding == "Lung Lesion":
        plain = _a(_noun(change))  # "a nodule", "a mass": countable, the size is said once
        if kind in ("increased", "decreased") and change.size_before and change.size_after:
            verb = "grown" if kind == "increased" else "decreased"
            return f"The {core} in {region} has {verb} from {_mm(change.size_before)} to {_mm(change.size_after)} mm."
        size = f"{_mm(change.size_after)} mm " if change.size_after else ""
        return {
            "new": f"A {size}{core} has appeared in {region}, indicating a new {_noun(change)}.",
            "increased": f"The {core} in {region} has grown.", "decreased": f"The {core} in {region} has become smaller.",
            "resolved": f"The {core} in {region} is no longer seen, indicating resolution of the {_noun(change)}.",
        }.get(kind, f"The {size}{core} in {region} is unchanged, consistent with {_a('persistent ' + _noun(change))}.")
    volume_loss = " with volume loss" if finding == "Atelectasis" else ""
    new_what = _a("new " + what) if finding == "Lung Opacity" and not _is_plural(what) else "new " + what
    return {
        "new": f"{_cap(_a(core))}{volume_loss} has appeared in {region}, indicating {new_what}.",
        "increased": f"The {core} in {region} has become larger and denser, indicating worsening {plain}{_now(change)}.",
        "decreased": f"The {core} in {region} has become smaller and fainter, indicating improving {plain}{_now(change)}.",
        "resolved": f"{_cap(region)} {'are' if region.startswith('both') else 'is'} clear again, indicating resolution of the {plain}.",
    }.get(kind, f"The {core} in {region} is unchanged, consistent with persistent {plain}.")


def _now(change: Change) -> str:
    return f", now {change.severity_after}" if change.severity_after and change.kind in ("increased", "decreased") and change.finding != "Lung Lesion" else ""


def render_interpretation(changes: list[Change]) -> str:
    """Visual changes between the prior and follow-up radiographs, one sentence per change."""
    if not changes:
        return "The follow-up radiograph shows no significant interval change from the prior."
    return " ".join(_interpretation_sentence(c) for c in changes)
