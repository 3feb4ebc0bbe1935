"""The finding vocabulary of the synthetic world: keys, severities and study states.

Finding keys (fixed; "left"/"right" are the PATIENT's sides, the patient's
left is on the image right):

============================  =====================  ==============================================
key                           CheXpert label          ``location`` / ``size_mm``
============================  =====================  ==============================================
pleural_effusion_left/right   Pleural Effusion        "costophrenic" / -
cardiomegaly                  Cardiomegaly            "heart" / - (``ctr`` = cardiothoracic ratio)
edema                         Edema                   "perihilar" / -
consolidation_left/right      Consolidation           lobe: "upper" | "middle" (right only) | "lower"
pneumothorax_left/right       Pneumothorax            "apical" / -
atelectasis_left/right        Atelectasis             "basilar" / -
lung_lesion_left/right        Lung Lesion             zone "upper" | "middle" | "lower" / diameter mm
support_devices               Support Devices         "+"-joined kinds of ``DEVICE_KINDS``
============================  =====================  ==============================================

``severity`` is an integer grade: 0 absent, 1 small / mild, 2 moderate,
3 large / severe (support devices: 1 when any device is present). A finding with
``severity == 0`` has ``present == False``.
"""
from __future__ import annotations

import dataclasses

__all__ = [
    "FINDING_KEYS",
    "FINDING_LABEL",
    "DEVICE_KINDS",
    "SEVERITY_WORDS",
    "Finding",
    "StudyState",
    "key_side",
    "key_kind",
    "cardiothoracic_ratio",
]

FINDING_KEYS: tuple[str, ...] = (
    "pleural_effusion_right",
    "pleural_effusion_left",
    "cardiomegaly",
    "edema",
    "consolidation_right",
    "consolidation_left",
    "pneumothorax_right",
    "pneumothorax_left",
    "atelectasis_right",
    "atelectasis_left",
    "lung_lesion_right",
    "lung_lesion_left",
    "support_devices",
)

#: finding kind -> the CheXpert label it makes positive
FINDING_LABEL: dict[str, str] = {
    "pleural_effusion": "Pleural Effusion",
    "cardiomegaly": "Cardiomegaly",
    "edema": "Edema",
    "consolidation": "Consolidation",
    "pneumothorax": "Pneumothorax",
    "atelectasis": "Atelectasis",
    "lung_lesion": "Lung Lesion",
    "support_devices": "Support Devices",
}

#: ett = endotracheal tube, cvc = right internal jugular central venous catheter,
#: ngt = nasogastric tube, pacemaker = left pectoral generator with leads
DEVICE_KINDS: tuple[str, ...] = ("ett", "cvc", "ngt", "pacemaker")

SEVERITY_WORDS = {1: "small", 2: "moderate", 3: "large"}

#: cardiothoracic ratio by cardiomegaly grade (0 = the patient's own normal ratio)
CTR_BY_GRADE = {1: 0.55, 2: 0.61, 3: 0.68}


def key_kind(key: str) -> str:
    """'pleural_effusion_left' -> 'pleural_effusion'."""
    for suffix in ("_left", "_right"):
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return key


def key_side(key: str) -> str | None:
    """'pleural_effusion_left' -> 'left'; bilateral / central findings -> None."""
    if key.endswith("_left"):
        return "left"
    if key.endswith("_right"):
        return "right"
    return None


@dataclasses.dataclass
class Finding:
    present: bool = False
    severity: int = 0  # 0..3
    side: str | None = None  # "left" | "right" | None (central / bilateral)
    location: str = ""
    size_mm: float | None = None  # lung lesion diameter

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class StudyState:
    """The true state of every finding in one study (keys = :data:`FINDING_KEYS`)."""

    findings: dict[str, Finding]

    @classmethod
    def empty(cls) -> "StudyState":
        return cls({key: Finding(side=key_side(key)) for key in FINDING_KEYS})

    def copy(self) -> "StudyState":
        return StudyState({k: dataclasses.replace(v) for k, v in self.findings.items()})

    def __getitem__(self, key: str) -> Finding:
        return self.findings[key]

    def present_keys(self) -> list[str]:
        return [k for k in FINDING_KEYS if self.findings[k].present]

    def to_json(self) -> dict:
        return {k: self.findings[k].to_json() for k in FINDING_KEYS}

    @classmethod
    def from_json(cls, data: dict) -> "StudyState":
        missing = [k for k in FINDING_KEYS if k not in data]
        if missing:
            raise ValueError(f"finding state lacks keys {missing}")
        return cls({k: Finding(**data[k]) for k in FINDING_KEYS})


def cardiothoracic_ratio(normal_ctr: float, grade: int) -> float:
    """Cardiothoracic ratio shown for a cardiomegaly grade (0 = the patient's normal)."""
    return normal_ctr if grade <= 0 else max(CTR_BY_GRADE[grade], normal_ctr + 0.05)
