"""A tiny ICG-CXR dataset for the evaluation tests (no upstream stage needed).

Each pair: a phantom prior and follow-up (a bright lower-left blob = left pleural
effusion, a wide central ellipse = cardiomegaly), a templated prompt and
interpretation, CheXpert labels for both studies. Written with the shared
``progemu.data.icgcxr.write_pair`` / ``write_manifest`` so it is a real dataset.
"""
from __future__ import annotations

from pathlib import Path

import pytest

import numpy as np

from progemu.data.icgcxr import load_pairs, pair_from_json, write_manifest, write_pair
from progemu.data.labels import CHEXPERT_LABELS, MISSING_LABEL


def phantom(size: int, effusion: bool, cardiomegaly: bool, rng: np.random.Generator) -> np.ndarray:
    """float32 [size, size] in [0, 1]."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    image = 0.25 + 0.05 * rng.standard_normal((size, size))
    lungs = ((xx - 0.3) ** 2 / 0.03 + (yy - 0.5) ** 2 / 0.12 < 1) | ((xx - 0.7) ** 2 / 0.03 + (yy - 0.5) ** 2 / 0.12 < 1)
    image[lungs] -= 0.15
    heart_width = 0.045 if cardiomegaly else 0.015
    image[((xx - 0.5) ** 2 / heart_width + (yy - 0.62) ** 2 / 0.02) < 1] = 0.7
    if effusion:  # patient's left = image right
        image[(yy > 0.7) & (xx > 0.55) & (xx < 0.9)] = 0.8
    return np.clip(image, 0, 1).astype(np.float32)


def _labels(effusion: bool, cardiomegaly: bool) -> dict:
    labels = {name: MISSING_LABEL for name in CHEXPERT_LABELS}
    labels["Pleural Effusion"] = 1.0 if effusion else 0.0
    labels["Cardiomegaly"] = 1.0 if cardiomegaly else 0.0
    labels["No Finding"] = 0.0 if (effusion or cardiomegaly) else 1.0
    return labels


def _texts(prior: tuple[bool, bool], followup: tuple[bool, bool]) -> tuple[str, str]:
    prompts, interpretations = [], []
    names = (("left pleural effusion", "blunting of the left costophrenic angle"),
             ("cardiomegaly", "enlargement of the cardiac silhouette"))
    for (name, sign), before, after in zip(names, prior, followup):
        if after and not before:
            prompts.append(f"New {name} has developed.")
            interpretations.append(f"There is new {sign}, indicating {name}.")
        elif before and not after:
            prompts.append(f"The {name} has resolved.")
            interpretations.append(f"The {sign} seen previously has resolved.")
        elif before and after:
            prompts.append(f"The {name} is unchanged.")
            interpretations.append(f"Persistent {sign} without change.")
    if not prompts:
        prompts, interpretations = ["No interval change."], ["The lungs remain clear without new findings."]
    return " ".join(prompts), " ".join(interpretations)


def _state_text(effusion: bool, cardiomegaly: bool) -> str:
    return " ".join([("Left pleural effusion." if effusion else "No pleural effusion."),
                     ("The heart is enlarged." if cardiomegaly else "Heart size is normal.")])


def make_tiny_dataset(root: str | Path, n_train: int = 24, n_test: int = 8, size: int = 64, seed: int = 0) -> Path:
    """Write a tiny curated dataset under ``root`` and return it."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    pairs = []
    for index in range(n_train + n_test):
        split = "train" if index < n_train else "test"
        prior = (bool(rng.random() < 0.5), bool(rng.random() < 0.5))
        followup = (not prior[0], prior[1]) if index % 3 else (prior[0], not prior[1])
        prompt, interpretation = _texts(prior, followup)
        subject = f"{10000000 + index}"
        pair_json = {
            "progression-description": prompt, "changes-of-findings": interpretation,
            "comment": {"confidence": 5, "reason": "fixture"}, "time-interval": 30, "view": "PA",
            "subject-id": subject, "reference-study-id": f"5{index:07d}", "followup-study-id": f"6{index:07d}",
            "reference-study-order": 1, "followup-study-order": 2, "split": split,
            "reference-diseases": _labels(*prior), "followup-diseases": _labels(*followup),
            "reference-report": {"findings": _state_text(*prior), "impression": ""},
            "followup-report": {"findings": _state_text(*followup), "impression": ""},
        }
        path = write_pair(root, pair_json, phantom(size, *prior, rng), phantom(size, *followup, rng),
                          source="mimic_cxr", split=split)
        pairs.append(pair_from_json(path, root))
    write_manifest(root, pairs)
    assert len(load_pairs(root, split="test")) == n_test
    return root


def train_tiny_evaluators(data_dir: str | Path, out_dir: str | Path, epochs: int = 8) -> Path:
    """Small, fast evaluators on the tiny dataset (64 px)."""
    from progemu.evaluate.evaluator_training import ClipConfig, TrainEvaluatorsConfig, train_evaluators
    from progemu.evaluate.evaluators import ClassifierConfig

    config = TrainEvaluatorsConfig(classifier=ClassifierConfig(image_size=64), clip=ClipConfig(image_size=64),
                                   classifier_epochs=epochs, clip_epochs=epochs, batch_size=16)
    return train_evaluators(data_dir, out_dir, config, progress=False)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Evaluation tests train small models; one torch thread keeps them fast and repeatable on 2 cores.
    Autouse: importing this name into a test module applies it to every test there."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
