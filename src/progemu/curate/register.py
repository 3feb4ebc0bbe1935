"""SimpleITK registration of the prior onto the follow-up, and the official settings for comparison.

:func:`register_pair` (ours): the optimisation runs on box-downsampled copies (128 px,
``work_size``) carrying a physical pixel spacing, so the transform it finds is in full-size
pixel units and only the final B-spline resampling touches the full image; on them a 2-level
pyramid (shrink 2, 1 with Gaussian smoothing), a rigid (``Euler2DTransform``, centred by image
moments) stage, then an affine stage started from the rigid result, both with the correlation
(NCC) metric on a 25% random sample with a fixed seed, regular-step gradient descent and
physical-shift scales. NCC suits two radiographs of one patient (same modality, exposure
differs by a roughly linear gain) and is cheaper than mutual information. When the result
does not raise NCC the unregistered prior is kept; a pair already aligned (SSIM >= 0.9, the
official rule) is not registered.

:func:`register_official` reproduces the official ICG-CXR script (``formats.md`` §3): affine,
centred GEOMETRY initializer, MeanSquares, 25% random sampling, gradient descent lr 1.0,
200 iterations, full resolution, B-spline resampling, on 0..255 intensities. It is the
reference of the benchmark. (The official script registers the follow-up onto the prior; both
directions are the same problem, we keep the issue's prior-onto-follow-up for both.)

Quality (:func:`similarity`): NCC (Pearson correlation of all pixels, -1..1) and SSIM
(scikit-image, data range 1) between the (registered) prior and the follow-up, before and after.
``reg_metric`` in the pair JSON is the dict of :class:`RegistrationResult` minus the image.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np

__all__ = ["RegistrationConfig", "RegistrationResult", "register_pair", "register_official", "similarity", "ncc"]


@dataclasses.dataclass
class RegistrationConfig:
    """Settings of our registration and of the accept / reject decision."""

    work_size: int = 128  # px: registration runs on copies downsampled to this size (0 = full size)
    shrink_factors: tuple[int, ...] = (2, 1)  # pyramid levels on top of the working size
    smoothing_sigmas: tuple[float, ...] = (1.0, 0.0)  # working-size pixels, one per level
    sampling_fraction: float = 0.25
    rigid_iterations: int = 60
    affine_iterations: int = 60
    seed: int = 20240531
    skip_if_ssim_above: float = 0.9  # already aligned (the official rule): keep the prior as is
    min_ssim: float = 0.2  # after registration, below this the pair is rejected (official: before)
    # after registration, below this the pair is rejected as misaligned; real AP/PA pairs of one
    # patient reach 0.5-0.8 (Hannover series), unrelated images or blank plates stay below 0.4
    min_ncc: float = 0.4


@dataclasses.dataclass
class RegistrationResult:
    """Registered prior ``[H, W]`` float32 in [0, 1] plus the quality numbers (``reg_metric``)."""

    prior: np.ndarray
    method: str
    registered: bool
    ncc_before: float
    ncc_after: float
    ssim_before: float
    ssim_after: float
    seconds: float
    matrix: list[float] = dataclasses.field(default_factory=list)  # 2x2 affine matrix, row-major
    translation: list[float] = dataclasses.field(default_factory=list)  # pixels (x, y)

    def reg_metric(self) -> dict:
        """The value stored as ``reg_metric``: metric names, before/after values, transform."""
        # no timing here: a re-run must write byte-identical pair JSONs
        out = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("prior", "seconds")}
        out["metric"] = "ncc"
        for key in ("ncc_before", "ncc_after", "ssim_before", "ssim_after"):
            out[key] = round(float(out[key]), 4)
        out["matrix"] = [round(float(v), 5) for v in self.matrix]
        out["translation"] = [round(float(v), 3) for v in self.translation]
        return out


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised cross-correlation (Pearson r) of two images of equal shape, in [-1, 1]."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    a = a - a.mean()
    b = b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def similarity(moving: np.ndarray, fixed: np.ndarray) -> tuple[float, float]:
    """``(ncc, ssim)`` between two float images in [0, 1]."""
    from skimage.metrics import structural_similarity

    return ncc(moving, fixed), float(structural_similarity(moving, fixed, data_range=1.0))


def _to_sitk(image: np.ndarray, spacing: float = 1.0):
    import SimpleITK as sitk

    out = sitk.GetImageFromArray(np.ascontiguousarray(image, dtype=np.float32))
    out.SetSpacing((spacing, spacing))
    return out


def _downsample(image: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """Antialiased (box) downsampling to ``size`` px on the long side; returns the image and
    the pixel spacing in full-size pixels, so transforms found on it apply to the full image."""
    from PIL import Image

    height, width = image.shape
    if size <= 0 or max(height, width) <= size:
        return image, 1.0
    scale = max(height, width) / size
    shape = (max(1, round(width / scale)), max(1, round(height / scale)))
    small = Image.fromarray(np.ascontiguousarray(image, np.float32), mode="F").resize(shape, Image.BOX)
    return np.asarray(small, np.float32), width / shape[0]


def _edge_value(image) -> float:
    """Median of the outermost pixel ring: the background that a shifted prior uncovers."""
    import SimpleITK as sitk

    array = sitk.GetArrayViewFromImage(image)
    ring = np.concatenate([array[0], array[-1], array[:, 0], array[:, -1]])
    return float(np.median(ring))


def _resample(moving, fixed, transform, interpolator) -> np.ndarray:
    import SimpleITK as sitk

    # Filling uncovered areas with the image's own background (not black) avoids creating
    # artificial edges that SSIM and the downstream models would see.
    out = sitk.Resample(moving, fixed, transform, interpolator, _edge_value(moving), sitk.sitkFloat32)
    return np.clip(sitk.GetArrayFromImage(out), 0.0, 1.0).astype(np.float32)


def _affine_parts(transform) -> tuple[list[float], list[float]]:
    import SimpleITK as sitk

    affine = sitk.AffineTransform(2)
    if isinstance(transform, sitk.CompositeTransform):
        transform = transform.GetBackTransform() if transform.GetNumberOfTransforms() else transform
    try:
        affine.SetMatrix(transform.GetMatrix())
        affine.SetTranslation(transform.GetTranslation())
    except (AttributeError, RuntimeError):
        return [], []
    return list(affine.GetMatrix()), list(affine.GetTranslation())


def register_pair(prior: np.ndarray, followup: np.ndarray, config: RegistrationConfig | None = None) -> RegistrationResult:
    """Register ``prior`` onto ``followup`` (both float32 [H, W] in [0, 1], same shape).

    Returns the registered prior; when registration does not improve NCC the unregistered
    prior is kept (``registered=False``), so a failed optimisation never makes a pair worse.
    """
    import SimpleITK as sitk

    config = config or RegistrationConfig()
    if prior.shape != followup.shape:
        raise ValueError(f"prior {prior.shape} and follow-up {followup.shape} must have the same shape")
    ncc_before, ssim_before = similarity(prior, followup)
    start = time.perf_counter()  # ``seconds`` times the registration itself, not the similarity numbers
    if ssim_before >= config.skip_if_ssim_above:
        return RegistrationResult(prior.astype(np.float32), "none (already aligned)", False, ncc_before, ncc_before,
                                  ssim_before, ssim_before, 0.0, [1.0, 0.0, 0.0, 1.0], [0.0, 0.0])
    # Optimise on small copies with physical spacing, so the transform found there is in
    # full-size pixel units; only the final resampling touches the full-size prior.
    small_fixed, spacing = _downsample(followup, config.work_size)
    small_moving, _ = _downsample(prior, config.work_size)
    fixed, moving = _to_sitk(small_fixed, spacing), _to_sitk(small_moving, spacing)
    levels = len(config.shrink_factors)

    def method():
        registration = sitk.ImageRegistrationMethod()
        registration.SetMetricAsCorrelation()
        registration.SetMetricSamplingStrategy(registration.RANDOM)
        registration.SetMetricSamplingPercentage(config.sampling_fraction, config.seed)
        registration.SetInterpolator(sitk.sitkLinear)
        registration.SetShrinkFactorsPerLevel(list(config.shrink_factors))
        registration.SetSmoothingSigmasPerLevel(list(config.smoothing_sigmas[:levels]))
        registration.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
        return registration

    rigid = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler2DTransform(),
                                              sitk.CenteredTransformInitializerFilter.MOMENTS)
    stage = method()
    stage.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3,
                                                   numberOfIterations=config.rigid_iterations,
                                                   relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
    stage.SetOptimizerScalesFromPhysicalShift()
    stage.SetInitialTransform(rigid, inPlace=True)
    stage.Execute(fixed, moving)

    affine = sitk.AffineTransform(2)
    affine.SetCenter(rigid.GetCenter())
    affine.SetMatrix(rigid.GetMatrix())
    affine.SetTranslation(rigid.GetTranslation())
    stage = method()
    stage.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4,
                                                   numberOfIterations=config.affine_iterations,
                                                   relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
    stage.SetOptimizerScalesFromPhysicalShift()
    stage.SetInitialTransform(affine, inPlace=True)
    stage.Execute(fixed, moving)

    registered = _resample(_to_sitk(prior), _to_sitk(followup), affine, sitk.sitkBSpline)
    seconds = time.perf_counter() - start
    ncc_after, ssim_after = similarity(registered, followup)
    matrix, translation = list(affine.GetMatrix()), list(affine.GetTranslation())
    if ncc_after <= ncc_before:
        registered, ncc_after, ssim_after = prior.astype(np.float32), ncc_before, ssim_before
        return RegistrationResult(registered, "rigid+affine ncc multires (no gain: unregistered kept)", False,
                                  ncc_before, ncc_after, ssim_before, ssim_after, seconds,
                                  [1.0, 0.0, 0.0, 1.0], [0.0, 0.0])
    return RegistrationResult(registered, "rigid+affine ncc multires", True, ncc_before, ncc_after, ssim_before,
                              ssim_after, seconds, matrix, translation)


def register_official(prior: np.ndarray, followup: np.ndarray, seed: int | None = 20240531) -> RegistrationResult:
    """The official ICG-CXR registration (reference of the benchmark; see module docstring).

    As in ``register_chexpertplus.py``: intensities 0..255 (MeanSquares gradients, hence the
    step sizes of lr 1.0, depend on that range), centred GEOMETRY initializer, MeanSquares on a
    25% random sample, gradient descent lr 1.0 / 200 iterations / convergence 1e-6 over a window
    of 10, physical-shift scales, B-spline resampling with the prior's minimum as fill value.
    ``seed`` fixes the random sample (the official script leaves it unseeded; None does too).
    """
    import SimpleITK as sitk

    ncc_before, ssim_before = similarity(prior, followup)
    start = time.perf_counter()
    fixed = sitk.GetImageFromArray(np.rint(followup * 255.0).astype(np.float32))
    moving = sitk.GetImageFromArray(np.rint(prior * 255.0).astype(np.float32))
    initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.AffineTransform(2),
                                                sitk.CenteredTransformInitializerFilter.GEOMETRY)
    registration = sitk.ImageRegistrationMethod()
    registration.SetMetricAsMeanSquares()
    registration.SetMetricSamplingStrategy(registration.RANDOM)
    if seed is None:
        registration.SetMetricSamplingPercentage(0.25)
    else:
        registration.SetMetricSamplingPercentage(0.25, seed)
    registration.SetInterpolator(sitk.sitkLinear)
    registration.SetOptimizerAsGradientDescent(learningRate=1.0, numberOfIterations=200,
                                               convergenceMinimumValue=1e-6, convergenceWindowSize=10)
    registration.SetOptimizerScalesFromPhysicalShift()
    registration.SetInitialTransform(initial, inPlace=False)
    transform = registration.Execute(fixed, moving)
    fill = float(np.rint(prior.min() * 255.0))
    resampled = sitk.Resample(moving, fixed, transform, sitk.sitkBSpline, fill, sitk.sitkFloat32)
    registered = np.clip(sitk.GetArrayFromImage(resampled) / 255.0, 0.0, 1.0).astype(np.float32)
    seconds = time.perf_counter() - start
    ncc_after, ssim_after = similarity(registered, followup)
    matrix, translation = _affine_parts(transform)
    return RegistrationResult(registered, "official affine meansquares", True, ncc_before, ncc_after, ssim_before,
                              ssim_after, seconds, matrix, translation)
