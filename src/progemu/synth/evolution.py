"""How a synthetic patient's findings evolve over 2-6 studies.

Each finding follows a small Markov chain on its severity grade (0 absent,
1-3): it appears, grows, shrinks, resolves or stays, with the probabilities in
:class:`EvolutionConfig`. Findings are correlated the way they are in practice
(cardiomegaly makes edema and effusions likelier; an AP study likelier carries
support devices). Intervals are mostly under 100 days (exponential, mean
``mean_interval_days``), with a fraction of long gaps (100-700 days).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .anatomy import PatientAnatomy, Pose, sample_anatomy, sample_pose
from .findings import DEVICE_KINDS, FINDING_KEYS, Finding, StudyState, key_kind, key_side

__all__ = ["EvolutionConfig", "PlannedStudy", "simulate_patient", "lesion_grade"]


@dataclasses.dataclass
class EvolutionConfig:
    min_studies: int = 2
    max_studies: int = 6
    ap_fraction: float = 0.25
    mean_interval_days: float = 30.0
    long_interval_fraction: float = 0.12
    #: per-kind probability of being present at the first study
    initial: dict = dataclasses.field(default_factory=lambda: {
        "pleural_effusion": 0.16, "cardiomegaly": 0.25, "edema": 0.10, "consolidation": 0.10,
        "pneumothorax": 0.05, "atelectasis": 0.10, "lung_lesion": 0.10, "support_devices": 0.18,
    })
    #: per-kind probability of appearing at the next study when absent
    appear: dict = dataclasses.field(default_factory=lambda: {
        "pleural_effusion": 0.10, "cardiomegaly": 0.03, "edema": 0.08, "consolidation": 0.08,
        "pneumothorax": 0.04, "atelectasis": 0.08, "lung_lesion": 0.02, "support_devices": 0.10,
    })
    resolve: float = 0.22
    grow: float = 0.20
    shrink: float = 0.20


@dataclasses.dataclass
class PlannedStudy:
    order: int  # 1-based chronological
    interval_days: float | None  # from the previous study (None for the first)
    offset_days: float  # from the first study
    pose: Pose
    lateral_pose: Pose
    state: StudyState


def lesion_grade(size_mm: float) -> int:
    """Nodule < 20 mm: 1; 20-30 mm: 2; mass >= 30 mm: 3."""
    return 1 if size_mm < 20 else (2 if size_mm < 30 else 3)


def _initial_state(rng: np.random.Generator, cfg: EvolutionConfig, an: PatientAnatomy) -> StudyState:
    state = StudyState.empty()
    p = cfg.initial
    cardio = rng.random() < p["cardiomegaly"]
    if cardio:
        _set(state, "cardiomegaly", int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15])), "heart")
    boost = 2.2 if cardio else 1.0
    for side in ("right", "left"):
        if rng.random() < p["pleural_effusion"] * boost:
            _set(state, f"pleural_effusion_{side}", int(rng.integers(1, 4)), "costophrenic")
        if rng.random() < p["consolidation"]:
            _set(state, f"consolidation_{side}", int(rng.integers(1, 4)), _lobe(rng, side))
        if rng.random() < p["pneumothorax"] / 2:
            _set(state, f"pneumothorax_{side}", int(rng.choice([1, 2, 3], p=[0.55, 0.3, 0.15])), "apical")
        if rng.random() < p["atelectasis"]:
            _set(state, f"atelectasis_{side}", int(rng.integers(1, 4)), "basilar")
    if rng.random() < p["edema"] * boost:
        _set(state, "edema", int(rng.integers(1, 4)), "perihilar")
    if rng.random() < p["lung_lesion"]:
        side = "right" if rng.random() < 0.5 else "left"
        size = float(np.round(rng.uniform(10, 45)))
        _set(state, f"lung_lesion_{side}", lesion_grade(size), str(rng.choice(["upper", "middle", "lower"])), size)
    if rng.random() < p["support_devices"]:
        _set_devices(state, rng)
    return state


def _lobe(rng: np.random.Generator, side: str) -> str:
    return str(rng.choice(["upper", "middle", "lower"] if side == "right" else ["upper", "lower"]))


def _set(state: StudyState, key: str, grade: int, location: str, size_mm: float | None = None) -> None:
    state.findings[key] = Finding(present=grade > 0, severity=grade, side=key_side(key),
                                  location=location if grade > 0 else "", size_mm=size_mm if grade > 0 else None)


def _set_devices(state: StudyState, rng: np.random.Generator, keep: list[str] | None = None) -> None:
    kinds = set(keep or [])
    while not kinds:
        for kind, p in zip(DEVICE_KINDS, (0.45, 0.5, 0.35, 0.2)):
            if rng.random() < p:
                kinds.add(kind)
    ordered = [k for k in DEVICE_KINDS if k in kinds]
    state.findings["support_devices"] = Finding(present=True, severity=1, side=None, location="+".join(ordered))


def _next_state(prev: StudyState, rng: np.random.Generator, cfg: EvolutionConfig) -> StudyState:
    state = prev.copy()
    cardio = prev["cardiomegaly"].present
    for key in FINDING_KEYS:
        kind = key_kind(key)
        old = prev[key]
        if kind == "support_devices":
            if old.present:
                r = rng.random()
                if r < 0.30:
                    state.findings[key] = Finding()
                elif r < 0.45:
                    kinds = old.location.split("+")
                    if len(kinds) > 1:
                        kinds.pop(int(rng.integers(len(kinds))))
                    _set_devices(state, rng, kinds)
            elif rng.random() < cfg.appear[kind]:
                _set_devices(state, rng)
            continue
        if kind == "lung_lesion":
            if old.present:
                if rng.random() < 0.06:
                    _set(state, key, 0, "")
                else:
                    size = float(np.round(min(60.0, old.size_mm * rng.uniform(0.95, 1.35))))
                    _set(state, key, lesion_grade(size), old.location, size)
            elif not any(prev[k].present for k in ("lung_lesion_left", "lung_lesion_right")) and rng.random() < cfg.appear[kind] / 2:
                size = float(np.round(rng.uniform(10, 30)))
                _set(state, key, lesion_grade(size), str(rng.choice(["upper", "middle", "lower"])), size)
            continue
        if kind == "cardiomegaly":
            if old.present:
                r = rng.random()
                if r < 0.08 and old.severity < 3:
                    _set(state, key, old.severity + 1, "heart")
                elif r < 0.14:
                    _set(state, key, old.severity - 1, "heart")
            elif rng.random() < cfg.appear[kind]:
                _set(state, key, 1, "heart")
            continue
        appear = cfg.appear[kind] / (2 if key_side(key) else 1)
        if kind in ("pleural_effusion", "edema") and cardio:
            appear *= 2.0
        if old.present:
            r = rng.random()
            if r < cfg.resolve:
                _set(state, key, 0, "")
            elif r < cfg.resolve + cfg.grow and old.severity < 3:
                _set(state, key, old.severity + (2 if rng.random() < 0.15 and old.severity == 1 else 1), old.location)
            elif r < cfg.resolve + cfg.grow + cfg.shrink and old.severity > 1:
                _set(state, key, old.severity - 1, old.location)
        elif rng.random() < appear:
            location = {"pleural_effusion": "costophrenic", "edema": "perihilar", "pneumothorax": "apical",
                        "atelectasis": "basilar"}.get(kind) or _lobe(rng, key_side(key))
            _set(state, key, int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15])), location)
    return state


def _interval(rng: np.random.Generator, cfg: EvolutionConfig) -> float:
    if rng.random() < cfg.long_interval_fraction:
        return float(rng.uniform(100.0, 700.0))
    return float(min(99.0, 0.5 + rng.exponential(cfg.mean_interval_days)))


def simulate_patient(rng: np.random.Generator, cfg: EvolutionConfig | None = None,
                     anatomy: PatientAnatomy | None = None) -> tuple[PatientAnatomy, list[PlannedStudy]]:
    """One patient's anatomy and its chronological studies (2-6), each with pose and true state.

    ``anatomy``: the patient's body when already made (the real-anatomy world); by default a
    phantom body is drawn from ``rng`` first.
    """
    cfg = cfg or EvolutionConfig()
    if anatomy is None:
        anatomy = sample_anatomy(rng)
    count = int(rng.integers(cfg.min_studies, cfg.max_studies + 1))
    studies: list[PlannedStudy] = []
    state = _initial_state(rng, cfg, anatomy)
    offset = 0.0
    for order in range(1, count + 1):
        interval = None
        if order > 1:
            interval = _interval(rng, cfg)
            offset += interval
            state = _next_state(state, rng, cfg)
        ap_p = cfg.ap_fraction * (2.2 if state["support_devices"].present else 0.8)
        view = "AP" if rng.random() < ap_p else "PA"
        pose = sample_pose(rng, view)
        lateral = sample_pose(rng, view)
        studies.append(PlannedStudy(order, interval, offset, pose, lateral, state))
    return anatomy, studies
