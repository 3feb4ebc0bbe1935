"""Study states, truths and region masks shared by the synthetic-world rendering tests (phantom and real anatomy)."""
from __future__ import annotations

import numpy as np

from progemu.synth.findings import Finding, StudyState, key_kind, key_side
from progemu.synth.truth import StudyTruth

SIZE = 128
LOCATION = {"consolidation": "lower", "lung_lesion": "middle", "pleural_effusion": "costophrenic",
            "cardiomegaly": "heart", "edema": "perihilar", "pneumothorax": "apical", "atelectasis": "basilar"}


def study_state(key: str | None = None, grade: int = 2, devices: str = "ett+cvc+ngt+pacemaker") -> StudyState:
    state = StudyState.empty()
    if key is not None and grade > 0:
        kind = key_kind(key)
        if kind == "support_devices":
            state.findings[key] = Finding(True, 1, None, devices)
        else:
            size = {1: 15.0, 2: 25.0, 3: 40.0}[grade] if kind == "lung_lesion" else None
            state.findings[key] = Finding(True, grade, key_side(key), LOCATION[kind], size)
    return state


def study_truth(anatomy, state, pose, size=SIZE) -> StudyTruth:
    return StudyTruth(dataset="mimic", subject_id="10000001", study_id="50000001", split="train", study_order=1,
                      interval_days=None, view=pose.view, pose=pose, lateral_pose=pose, image_size=size,
                      anatomy=anatomy, state=state, labels={}, faults=[], frontal_image=None, lateral_image=None,
                      report_path=None, report_layout="standard")


def box_mask(box, size=SIZE, pad=0.0):
    x0, y0, x1, y1 = box
    c = (np.arange(size) + 0.5) / size
    xs, ys = np.meshgrid(c, c)
    return (xs >= x0 - pad) & (xs <= x1 + pad) & (ys >= y0 - pad) & (ys <= y1 + pad)
