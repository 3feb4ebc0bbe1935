"""The 14 CheXpert labels and their conventions, shared by synth, curation and evaluation."""
from __future__ import annotations

CHEXPERT_LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)

#: value used in the official ICG-CXR pair JSONs for a label that is missing (blank in the CSV)
MISSING_LABEL = -100
POSITIVE, NEGATIVE, UNCERTAIN = 1.0, 0.0, -1.0
