"""The per-pair image job of curation: read, clean, resize, register, accept or reject.

:func:`process_pair_images` runs in a worker process (``--workers``): it takes and returns
plain picklable dicts so the process pool needs nothing but this module.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from progemu.curate.preprocess import QualityConfig, prepare_image
from progemu.curate.register import RegistrationConfig, register_pair

__all__ = ["image_job", "process_pair_images", "init_worker"]


def init_worker() -> None:
    """One ITK thread per worker process: parallelism comes from the pool, and a single
    thread keeps the random-sampled registration bit-for-bit reproducible across runs."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def image_job(record_id: str, prior_path, followup_path, *, image_size: int, resize_mode: str,
              quality: QualityConfig, registration: RegistrationConfig) -> dict[str, Any]:
    return {
        "record": record_id,
        "prior_path": str(prior_path),
        "followup_path": str(followup_path),
        "image_size": int(image_size),
        "resize_mode": resize_mode,
        "quality": dataclasses.asdict(quality),
        "registration": dataclasses.asdict(registration),
    }


def process_pair_images(job: dict[str, Any]) -> dict[str, Any]:
    """Returns ``{"record", "ok": True, "prior": uint8 [S,S], "followup": uint8 [S,S], "reg_metric"}``
    or ``{"record", "ok": False, "stage": "image" | "registration", "reason"}``."""
    from progemu.data.images import read_image

    init_worker()
    quality = QualityConfig(**job["quality"])
    settings = dict(job["registration"])
    for key in ("shrink_factors", "smoothing_sigmas"):
        settings[key] = tuple(settings[key])
    registration = RegistrationConfig(**settings)
    prepared = {}
    for role in ("prior", "followup"):
        path = job[f"{role}_path"]
        try:
            image = read_image(path)
        except (ValueError, FileNotFoundError) as error:
            return {"record": job["record"], "ok": False, "stage": "image", "reason": f"{role} image: {error}"}
        ready, problem = prepare_image(image, job["image_size"], quality, job["resize_mode"])
        if problem is not None:
            return {"record": job["record"], "ok": False, "stage": "image",
                    "reason": f"{role} image {path}: poor quality: {problem}"}
        prepared[role] = ready
    try:
        result = register_pair(prepared["prior"], prepared["followup"], registration)
    except RuntimeError as error:  # ITK reports optimiser / sampling failures as RuntimeError
        first_line = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        return {"record": job["record"], "ok": False, "stage": "registration",
                "reason": f"SimpleITK registration failed ({first_line})"}
    metric = result.reg_metric()
    if result.ssim_after < registration.min_ssim or result.ncc_after < registration.min_ncc:
        return {"record": job["record"], "ok": False, "stage": "registration",
                "reason": (f"misaligned after registration (NCC {result.ncc_after:.3f} < {registration.min_ncc} "
                           f"or SSIM {result.ssim_after:.3f} < {registration.min_ssim})"),
                "reg_metric": metric}
    return {
        "record": job["record"],
        "ok": True,
        "prior": _to_uint8(result.prior),
        "followup": _to_uint8(prepared["followup"]),
        "reg_metric": metric,
    }


def _to_uint8(image: np.ndarray) -> np.ndarray:
    # The same rounding as atomic_save_png, done here so only a quarter of the bytes cross processes.
    return np.clip(np.rint(np.asarray(image, np.float64) * 255.0), 0, 255).astype(np.uint8)
