"""The resolved settings of one curation run, saved as ``OUT/curate_config.json``."""
from __future__ import annotations

import dataclasses

from progemu.curate.preprocess import QualityConfig
from progemu.curate.register import RegistrationConfig

__all__ = ["CurateConfig", "OUTPUT_FIELDS"]


@dataclasses.dataclass
class CurateConfig:
    """Everything that decides which pairs a run writes and what they contain.

    ``workers`` and the LLM endpoint's concurrency only change speed, so a resumed run may
    change them; every other field must match the run it resumes (see ``OUTPUT_FIELDS``).
    """

    mimic: str | None = None
    chexpert_plus: str | None = None
    out: str = ""
    annotator: str = "rules"
    image_size: int = 512
    resize_mode: str = "stretch"
    max_days: float = 100.0
    min_confidence: int = 3
    split: str = "hash"  # "hash" (deterministic, patient-disjoint) | "official"
    test_fraction: float = 0.1
    seed: int = 0
    workers: int = 1
    llm_base_url: str | None = None
    llm_model: str | None = None
    llm_api_key_env: str = "OPENAI_API_KEY"
    llm_api_version: str | None = None
    llm_concurrency: int = 4
    allow_public_llm_with_dua: bool = False
    credentialed: bool = True  # False only for the synthetic world
    limit_patients: int | None = None
    quality: QualityConfig = dataclasses.field(default_factory=QualityConfig)
    registration: RegistrationConfig = dataclasses.field(default_factory=RegistrationConfig)


#: fields that must not change between a run and its resumption
OUTPUT_FIELDS = ("mimic", "chexpert_plus", "annotator", "image_size", "resize_mode", "max_days", "min_confidence",
                 "split", "test_fraction", "seed", "llm_base_url", "llm_model", "limit_patients", "quality",
                 "registration")
