"""The two evaluators of Table 1: a pathology classifier and a CLIP model.

Real data (the paper): torchxrayvision ``DenseNet(weights="densenet121-res224-all")``
and BiomedCLIP through ``open_clip``. Neither can be downloaded by progemu's
machines, so both load from files the user provides (:func:`load_real_evaluators`)
and fail with a message naming what to download and where to put it.

Synthetic world: the same two architectures, small, trained on the **training
split only** by :func:`train_evaluators` (see :mod:`.evaluator_training`) and
saved to a directory read back by :func:`load_evaluators`::

    DIR/evaluators.json                      # kind, configs, training summary
    DIR/classifier/config.json               # ClassifierConfig (torchxrayvision DenseNet shape)
    DIR/classifier/model.safetensors
    DIR/clip/open_clip_config.json           # open_clip "local-dir:" format, as on the HF hub
    DIR/clip/open_clip_model.safetensors

The synthetic CLIP uses exactly open_clip's ``local-dir:`` loader, the same code
that reads a BiomedCLIP snapshot directory, so one metric path serves both.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from progemu.data.labels import CHEXPERT_LABELS

__all__ = [
    "ClassifierConfig",
    "Evaluators",
    "XRV_WEIGHTS",
    "XRV_TO_CHEXPERT",
    "BIOMEDCLIP_HUB_ID",
    "build_classifier",
    "load_xrv_classifier",
    "load_clip",
    "load_real_evaluators",
    "load_evaluators",
    "train_evaluators",
]

XRV_WEIGHTS = "densenet121-res224-all"
BIOMEDCLIP_HUB_ID = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
#: torchxrayvision output name -> CheXpert label (the 11 that overlap CheXpert-14)
XRV_TO_CHEXPERT = {
    "Atelectasis": "Atelectasis", "Cardiomegaly": "Cardiomegaly", "Consolidation": "Consolidation",
    "Edema": "Edema", "Enlarged Cardiomediastinum": "Enlarged Cardiomediastinum", "Fracture": "Fracture",
    "Lung Lesion": "Lung Lesion", "Lung Opacity": "Lung Opacity", "Effusion": "Pleural Effusion",
    "Pneumonia": "Pneumonia", "Pneumothorax": "Pneumothorax",
}


@dataclasses.dataclass
class ClassifierConfig:
    """Shape of a torchxrayvision ``DenseNet`` (defaults: a small one for the synthetic world)."""

    image_size: int = 128  # px, square input
    growth_rate: int = 8
    block_config: tuple[int, ...] = (2, 2, 2)
    num_init_features: int = 16
    bn_size: int = 2
    labels: tuple[str, ...] = CHEXPERT_LABELS  # output i is labels[i]


def build_classifier(config: ClassifierConfig):
    """A randomly initialised ``torchxrayvision.models.DenseNet`` with ``len(config.labels)`` outputs."""
    import torchxrayvision as xrv

    return xrv.models.DenseNet(growth_rate=config.growth_rate, block_config=tuple(config.block_config),
                               num_init_features=config.num_init_features, bn_size=config.bn_size,
                               num_classes=len(config.labels), in_channels=1, apply_sigmoid=True)


def _xrv_filename() -> tuple[str, str]:
    import torchxrayvision as xrv

    url = xrv.models.model_urls[XRV_WEIGHTS]["weights_url"]
    return os.path.basename(url), url


def load_xrv_classifier(weights: str | os.PathLike | None = None):
    """torchxrayvision ``DenseNet(weights="densenet121-res224-all")`` from a local file or directory.

    ``weights``: the downloaded ``.pt`` file (any name), or a directory holding it under its
    original name; ``None`` looks in torchxrayvision's own cache (``~/.torchxrayvision/models_data``).
    torchxrayvision's loader is used unchanged (it looks up ``cache_dir/<original name>``).
    """
    import torchxrayvision as xrv

    filename, url = _xrv_filename()
    path = Path(weights).expanduser() if weights is not None else Path(xrv.utils.get_cache_dir())
    candidate = path / filename if path.is_dir() or weights is None else path
    if not candidate.is_file():
        raise FileNotFoundError(
            f"torchxrayvision weights '{XRV_WEIGHTS}' not found at {candidate}. Download them on a machine with "
            f"internet access:\n    wget {url} -O {filename}\nthen pass --xrv-weights /path/to/{filename} "
            f"(or put the file in {xrv.utils.get_cache_dir()}).")
    if candidate.name == filename:
        return xrv.models.DenseNet(weights=XRV_WEIGHTS, cache_dir=str(candidate.parent))
    # torchxrayvision finds its weights by their original file name: link the user's file under it
    with tempfile.TemporaryDirectory(prefix="progemu-xrv-") as folder:
        os.symlink(candidate.resolve(), Path(folder) / filename)
        return xrv.models.DenseNet(weights=XRV_WEIGHTS, cache_dir=folder)


def load_clip(directory: str | os.PathLike, *, hub_id: str | None = None):
    """An ``open_clip`` model + tokenizer from a local directory.

    ``directory`` either holds ``open_clip_config.json`` + weights (a hub snapshot such as
    ``huggingface-cli download microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224
    --local-dir DIR``, or a synthetic CLIP saved by progemu), or is a Hugging Face cache
    directory holding a snapshot of ``hub_id``. Returns ``(model, tokenizer)``, model in eval mode.
    """
    import open_clip

    directory = Path(directory).expanduser()
    config = directory / "open_clip_config.json"
    if not config.is_file() and hub_id is not None and directory.is_dir():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(hub_id, "open_clip_config.json", cache_dir=str(directory))
        if isinstance(cached, str):
            config = Path(cached)
    if not config.is_file():
        what = hub_id or "an open_clip model"
        raise FileNotFoundError(
            f"no open_clip model in {directory} (missing open_clip_config.json). Download {what} on a machine "
            f"with internet access:\n    huggingface-cli download {hub_id or 'ORG/NAME'} --local-dir {directory}\n"
            "and pass that directory (BiomedCLIP's text tower also needs the config of "
            "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract in the Hugging Face cache).")
    name = f"local-dir:{config.parent}"
    try:
        model, _ = open_clip.create_model_from_pretrained(name)
        tokenizer = open_clip.get_tokenizer(name)
    except OSError as error:  # a hub lookup for a part that is not cached
        raise FileNotFoundError(f"{config.parent}: could not load the CLIP model offline ({error}); download the "
                                "missing files named above into the Hugging Face cache") from error
    model.eval()
    return model, tokenizer


@dataclasses.dataclass
class Evaluators:
    """A pathology classifier + a CLIP model behind one interface used by every metric.

    Images are ``float32 [B, 1, H, W]`` in [0, 1] (any H = W); each method resizes and
    normalises for its model.
    """

    classifier: object  # torchxrayvision DenseNet
    classifier_labels: tuple[str | None, ...]  # CheXpert name of each output (None: not a CheXpert label)
    classifier_size: int  # px
    clip_model: object | None
    clip_tokenizer: object | None
    kind: str  # "real" | "synthetic"
    description: dict = dataclasses.field(default_factory=dict)
    batch_size: int = 16
    device: str = "cpu"

    def to(self, device: str) -> "Evaluators":
        """Move both models to ``device`` ("cpu", "cuda", ...); returns self."""
        self.device = str(device)
        self.classifier.to(self.device)
        if self.clip_model is not None:
            self.clip_model.to(self.device)
        return self

    # -- classifier -----------------------------------------------------------------------------
    def _classifier_input(self, images):
        import torch.nn.functional as F

        x = F.interpolate(images.float(), size=(self.classifier_size,) * 2, mode="bilinear",
                          antialias=True, align_corners=False)
        # torchxrayvision's convention: [0, 1] -> [-1024, 1024]
        return (x.clamp(0, 1) * 2.0 - 1.0) * 1024.0

    def _batches(self, images: np.ndarray):
        import torch

        images = np.asarray(images, np.float32)
        if images.ndim == 3:
            images = images[:, None]
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"images must be float [B, 1, H, W] or [B, H, W] in [0, 1], got {images.shape}")
        for start in range(0, len(images), self.batch_size):
            yield torch.from_numpy(images[start:start + self.batch_size]).to(self.device)

    def features(self, images: np.ndarray) -> np.ndarray:
        """Classifier features (``features2``) ``float64 [B, D]`` for FID (D = 1024 for the real DenseNet)."""
        import torch

        self.classifier.eval()
        with torch.no_grad():
            chunks = [self.classifier.features2(self._classifier_input(b)).double().cpu().numpy() for b in self._batches(images)]
        return np.concatenate(chunks) if chunks else np.zeros((0, 0))

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """``float64 [B, 14]`` in CheXpert order (``CHEXPERT_LABELS``); NaN where the classifier has no output.

        Values are in [0, 1] with 0.5 as operating point (torchxrayvision's calibrated
        ``op_threshs`` outputs for the real model, a sigmoid for the synthetic one).
        """
        import torch

        self.classifier.eval()
        out = np.full((len(images), len(CHEXPERT_LABELS)), np.nan)
        with torch.no_grad():
            rows = [self.classifier(self._classifier_input(b)).double().cpu().numpy() for b in self._batches(images)]
        if not rows:
            return out
        raw = np.concatenate(rows)
        for index, name in enumerate(self.classifier_labels):
            if name in CHEXPERT_LABELS:
                out[:, CHEXPERT_LABELS.index(name)] = raw[:, index]
        return out

    # -- CLIP -----------------------------------------------------------------------------------
    def _clip_preprocess(self):
        import open_clip

        cfg = open_clip.get_model_preprocess_cfg(self.clip_model)
        size = cfg.get("size", 224)
        size = size if isinstance(size, (tuple, list)) else (size, size)
        return tuple(size), cfg.get("mean", open_clip.OPENAI_DATASET_MEAN), cfg.get("std", open_clip.OPENAI_DATASET_STD)

    def image_embeddings(self, images: np.ndarray) -> np.ndarray:
        """CLIP image embeddings ``float64 [B, E]`` (not normalised)."""
        import torch
        import torch.nn.functional as F

        if self.clip_model is None:
            raise RuntimeError("these evaluators have no CLIP model")
        size, mean, std = self._clip_preprocess()
        mean_t = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        chunks = []
        with torch.no_grad():
            for batch in self._batches(images):
                # same as open_clip's PIL transform for square images: bicubic resize, RGB, normalise
                x = F.interpolate(batch, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
                x = (x.repeat(1, 3, 1, 1) - mean_t) / std_t
                chunks.append(self.clip_model.encode_image(x).double().cpu().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, 0))

    def text_embeddings(self, texts: Sequence[str]) -> np.ndarray:
        """CLIP text embeddings ``float64 [B, E]`` (not normalised)."""
        import torch

        if self.clip_model is None:
            raise RuntimeError("these evaluators have no CLIP model")
        chunks = []
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                tokens = self.clip_tokenizer([str(t) for t in texts[start:start + self.batch_size]]).to(self.device)
                chunks.append(self.clip_model.encode_text(tokens).double().cpu().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, 0))


def load_real_evaluators(xrv_weights: str | os.PathLike | None, biomedclip: str | os.PathLike | None) -> Evaluators:
    """torchxrayvision DenseNet ("all") + BiomedCLIP from local files (see the loaders' messages)."""
    classifier = load_xrv_classifier(xrv_weights)
    labels = tuple(XRV_TO_CHEXPERT.get(name) for name in classifier.pathologies)
    clip_model = clip_tokenizer = None
    if biomedclip is None:
        raise FileNotFoundError(
            "no BiomedCLIP directory given: download it on a machine with internet access with\n"
            f"    huggingface-cli download {BIOMEDCLIP_HUB_ID} --local-dir DIR\nand pass --biomedclip DIR")
    clip_model, clip_tokenizer = load_clip(biomedclip, hub_id=BIOMEDCLIP_HUB_ID)
    return Evaluators(classifier=classifier, classifier_labels=labels, classifier_size=224,
                      clip_model=clip_model, clip_tokenizer=clip_tokenizer, kind="real",
                      description={"kind": "real", "classifier": f"torchxrayvision DenseNet {XRV_WEIGHTS}",
                                   "classifier_weights": str(xrv_weights) if xrv_weights else "torchxrayvision cache",
                                   "clip": f"BiomedCLIP {BIOMEDCLIP_HUB_ID}", "clip_dir": str(biomedclip),
                                   "feature_dim": 1024})


def load_evaluators(directory: str | os.PathLike) -> Evaluators:
    """Synthetic-world evaluators saved by :func:`train_evaluators`."""
    from safetensors.torch import load_file

    from progemu.utils.config import load_config

    directory = Path(directory)
    summary_path = directory / "evaluators.json"
    if not summary_path.is_file():
        raise FileNotFoundError(f"{directory}: no evaluators.json; train them with "
                                f"`progemu evaluate train-evaluators --data DATASET --out {directory}`")
    config = load_config(ClassifierConfig, directory / "classifier" / "config.json")
    classifier = build_classifier(config)
    classifier.load_state_dict(load_file(str(directory / "classifier" / "model.safetensors")))
    classifier.eval()
    clip_model, clip_tokenizer = load_clip(directory / "clip")
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    features = config.num_init_features
    for index, layers in enumerate(config.block_config):
        features += layers * config.growth_rate
        if index != len(config.block_config) - 1:
            features //= 2
    return Evaluators(classifier=classifier, classifier_labels=tuple(config.labels), classifier_size=config.image_size,
                      clip_model=clip_model, clip_tokenizer=clip_tokenizer, kind="synthetic",
                      description={"kind": "synthetic", "dir": str(directory), "feature_dim": features,
                                   "classifier": "torchxrayvision DenseNet (small, trained on the training split)",
                                   "clip": "open_clip CLIP (tiny, trained on the training split)",
                                   "training": summary.get("training", {})})


def train_evaluators(data_dir, out_dir, config=None, *, progress: bool = True) -> Path:
    """Train the synthetic-world classifier and CLIP on ``data_dir``'s training split; see :mod:`.evaluator_training`."""
    from .evaluator_training import train_evaluators as _train

    return _train(data_dir, out_dir, config, progress=progress)
