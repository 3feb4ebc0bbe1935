"""Training the synthetic-world evaluators on the TRAINING split only.

- Pathology classifier: a small torchxrayvision ``DenseNet`` (:class:`ClassifierConfig`),
  trained with a masked binary cross-entropy on every distinct prior and follow-up
  image of the training pairs against that study's CheXpert labels (uncertain and
  missing labels carry no loss).
- CLIP: a tiny ``open_clip`` CLIP (ViT + text transformer, :class:`ClipConfig`) trained
  with open_clip's ``ClipLoss`` on (image, its study's report) and (follow-up image,
  prompt) pairs, so that CLIP-I measures whether an image shows what a prompt describes.

Both take a few minutes on 2 CPU cores (classifier at 128 px, CLIP at 64 px) for a few
hundred pairs. The
resolved :class:`TrainEvaluatorsConfig` is saved in ``evaluators.json``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np

from progemu.data.labels import CHEXPERT_LABELS
from progemu.utils.atomic import atomic_write_json, match_umask
from progemu.utils.config import config_to_dict, save_config

from .evaluators import ClassifierConfig, build_classifier
from .images import load_stack

__all__ = ["ClipConfig", "TrainEvaluatorsConfig", "train_evaluators", "build_clip", "save_clip"]

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ClipConfig:
    """A tiny open_clip CLIP (vision tower + causal text transformer) for the synthetic world.

    ``vision="resnet"`` (open_clip's ModifiedResNet) is the default: measured on a held-out
    synthetic world after training on ~120 pairs, it separates matching from mismatching
    prompts (100 x cosine gap ~22, median rank 10 of 57) where a from-scratch tiny ViT stays
    at chance (see bench/results/evaluate.md). ``"vit"`` is kept for larger worlds.
    """

    vision: str = "resnet"  # "resnet" | "vit"
    image_size: int = 64  # px (a multiple of 32 for "resnet")
    resnet_layers: tuple[int, ...] = (1, 1, 1, 1)
    resnet_width: int = 16
    patch_size: int = 16  # vit
    vision_width: int = 64  # vit
    vision_layers: int = 2  # vit
    vision_head_width: int = 32  # vit
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 2
    context_length: int = 64
    embed_dim: int = 64
    mean: float = 0.5  # image normalisation (greyscale replicated to 3 channels)
    std: float = 0.25


@dataclasses.dataclass
class TrainEvaluatorsConfig:
    classifier: ClassifierConfig = dataclasses.field(default_factory=ClassifierConfig)
    clip: ClipConfig = dataclasses.field(default_factory=ClipConfig)
    classifier_epochs: int = 40
    classifier_lr: float = 2e-3
    clip_epochs: int = 20
    clip_lr: float = 1e-3
    batch_size: int = 32
    # CLIP text sources: "report" = each study's own report (findings + impression) with its image,
    # "prompt" / "interpretation" with the follow-up image
    texts: tuple[str, ...] = ("prompt", "report")
    max_pairs: int | None = None  # cap on training pairs (None: all)
    seed: int = 0


def clip_model_cfg(config: ClipConfig) -> dict:
    """open_clip ``model_cfg`` dict (the ``open_clip_config.json`` schema of the HF hub)."""
    if config.vision == "resnet":
        if config.image_size % 32:
            raise ValueError(f"ClipConfig.image_size {config.image_size}: the ResNet tower needs a multiple of 32")
        vision = {"image_size": config.image_size, "layers": list(config.resnet_layers), "width": config.resnet_width}
    elif config.vision == "vit":
        vision = {"image_size": config.image_size, "layers": config.vision_layers, "width": config.vision_width,
                  "head_width": config.vision_head_width, "patch_size": config.patch_size}
    else:
        raise ValueError(f"ClipConfig.vision {config.vision!r}: use 'resnet' or 'vit'")
    return {
        "embed_dim": config.embed_dim,
        "vision_cfg": vision,
        "text_cfg": {"context_length": config.context_length, "vocab_size": 49408, "width": config.text_width,
                     "heads": config.text_heads, "layers": config.text_layers},
    }


def build_clip(config: ClipConfig):
    """A randomly initialised ``open_clip.CLIP`` of ``config``'s shape."""
    import open_clip

    cfg = clip_model_cfg(config)
    return open_clip.CLIP(embed_dim=cfg["embed_dim"], vision_cfg=cfg["vision_cfg"], text_cfg=cfg["text_cfg"])


def save_clip(model, config: ClipConfig, directory: str | Path) -> Path:
    """Save in open_clip's ``local-dir:`` format (``open_clip_config.json`` + safetensors)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    preprocess = {"mean": [config.mean] * 3, "std": [config.std] * 3, "interpolation": "bicubic", "resize_mode": "shortest"}
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    tmp = directory / ".open_clip_model.safetensors.tmp"
    save_file(state, str(tmp))
    match_umask(tmp)  # safetensors writes 0600
    tmp.replace(directory / "open_clip_model.safetensors")
    atomic_write_json(directory / "open_clip_config.json", {"model_cfg": clip_model_cfg(config), "preprocess_cfg": preprocess})
    return directory


def _classifier_set(pairs, size: int):
    """Distinct training images with their labels: ``float32 [N,1,S,S]``, ``float32 [N,14]`` (NaN = no loss)."""
    from .classification import label_matrix

    seen: dict[str, dict] = {}
    for pair in pairs:
        seen.setdefault(str(pair.prior_image), pair.prior_labels)
        seen.setdefault(str(pair.followup_image), pair.followup_labels)
    paths = sorted(seen)
    return load_stack(paths, size), label_matrix([seen[p] for p in paths], CHEXPERT_LABELS).astype(np.float32)


def _train_classifier(pairs, config: TrainEvaluatorsConfig, out_dir: Path, progress: bool) -> dict:
    import torch
    from safetensors.torch import save_file
    from tqdm import tqdm

    images, targets = _classifier_set(pairs, config.classifier.image_size)
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    model = build_classifier(config.classifier)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.classifier_lr, weight_decay=1e-4)
    x_all = (torch.from_numpy(images) * 2.0 - 1.0) * 1024.0  # torchxrayvision's input range
    y_all = torch.from_numpy(targets)
    steps = config.classifier_epochs * max(1, -(-len(x_all) // config.batch_size))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    losses = []
    bar = tqdm(total=steps, desc="classifier", disable=not progress, leave=False)
    for _ in range(config.classifier_epochs):
        order = torch.randperm(len(x_all), generator=generator)
        for start in range(0, len(order), config.batch_size):
            index = order[start:start + config.batch_size]
            x, y = x_all[index], y_all[index]
            # small random shifts (no flips: laterality is part of the labels' meaning)
            dx, dy = (int(v) for v in torch.randint(-4, 5, (2,), generator=generator))
            x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            logits = model.classifier(model.features2(x))
            mask = ~torch.isnan(y)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits[mask], y[mask]) if mask.any() else logits.sum() * 0
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(float(loss))
            bar.update(1)
    bar.close()
    model.eval()
    folder = out_dir / "classifier"
    folder.mkdir(parents=True, exist_ok=True)
    save_config(config.classifier, folder / "config.json", kind="ClassifierConfig")
    tmp = folder / ".model.safetensors.tmp"
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    match_umask(tmp)  # safetensors writes 0600
    tmp.replace(folder / "model.safetensors")
    tail = losses[-max(1, len(losses) // 10):]
    return {"images": int(len(x_all)), "steps": len(losses), "first_loss": losses[0] if losses else None,
            "final_loss": float(np.mean(tail)) if tail else None}


def _report_texts(pair) -> tuple[str, str]:
    """(prior report, follow-up report) of a pair: findings + impression from its official JSON ("" if absent)."""
    if pair.json_path is None or not Path(pair.json_path).is_file():
        return "", ""
    try:
        data = json.loads(Path(pair.json_path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return "", ""

    def text(report) -> str:
        if isinstance(report, str):  # some writers store the dict's repr
            import ast

            try:
                report = ast.literal_eval(report)
            except (ValueError, SyntaxError):
                return report
        if isinstance(report, dict):
            return " ".join(str(report.get(k) or "") for k in ("findings", "impression")).strip()
        return ""

    return text(data.get("reference-report")), text(data.get("followup-report"))


def clip_training_items(pairs, sources: tuple[str, ...]) -> list[tuple[str, str]]:
    """(image path, text) items: ``prompt`` / ``interpretation`` go with the follow-up image,
    ``report`` gives (prior, prior report) and (follow-up, follow-up report)."""
    items = []
    for pair in pairs:
        for source in sources:
            if source == "report":
                prior_report, followup_report = _report_texts(pair)
                items += [(str(pair.prior_image), prior_report), (str(pair.followup_image), followup_report)]
            elif source in ("prompt", "interpretation"):
                items.append((str(pair.followup_image), getattr(pair, source)))
            else:
                raise ValueError(f"unknown CLIP text source {source!r}; use prompt, interpretation or report")
    return [(image, text) for image, text in items if text and text.strip()]


def _train_clip(pairs, config: TrainEvaluatorsConfig, out_dir: Path, progress: bool) -> dict:
    import open_clip
    import torch
    from tqdm import tqdm

    items = clip_training_items(pairs, tuple(config.texts))
    if len(items) < 2:
        raise ValueError("too few training pairs with text to train a CLIP (need at least 2)")
    paths = sorted({image for image, _ in items})
    position = {path: i for i, path in enumerate(paths)}
    texts = [text for _, text in items]
    image_index = [position[image] for image, _ in items]
    images = load_stack(paths, config.clip.image_size)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed + 1)
    model = build_clip(config.clip)
    tokenizer = open_clip.SimpleTokenizer(context_length=config.clip.context_length)
    tokens = tokenizer(texts)
    x_all = (torch.from_numpy(images).repeat(1, 3, 1, 1) - config.clip.mean) / config.clip.std
    image_index_t = torch.tensor(image_index)
    loss_fn = open_clip.ClipLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.clip_lr, weight_decay=0.1)
    steps = config.clip_epochs * max(1, -(-len(texts) // config.batch_size))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    model.train()
    losses = []
    bar = tqdm(total=steps, desc="clip", disable=not progress, leave=False)
    for _ in range(config.clip_epochs):
        order = torch.randperm(len(texts), generator=generator)
        for start in range(0, len(order), config.batch_size):
            index = order[start:start + config.batch_size]
            if len(index) < 2:
                continue
            image_features, text_features, logit_scale = model(x_all[image_index_t[index]], tokens[index])[:3]
            loss = loss_fn(image_features, text_features, logit_scale)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            with torch.no_grad():  # as in CLIP: keep the temperature bounded
                model.logit_scale.clamp_(0, np.log(100))
            losses.append(float(loss.detach()))
            bar.update(1)
    bar.close()
    model.eval()
    save_clip(model, config.clip, out_dir / "clip")
    tail = losses[-max(1, len(losses) // 10):]
    return {"texts": len(texts), "steps": len(losses), "first_loss": losses[0] if losses else None,
            "final_loss": float(np.mean(tail)) if tail else None}


def train_evaluators(data_dir, out_dir, config: TrainEvaluatorsConfig | None = None, *, progress: bool = True) -> Path:
    """Train both evaluators on ``data_dir``'s training split and save them to ``out_dir``.

    Returns ``out_dir``. Only pairs with ``split == "train"`` are read, so test
    images never influence the evaluators.
    """
    from progemu.data.icgcxr import load_pairs

    config = config or TrainEvaluatorsConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs = load_pairs(data_dir, split="train")
    if config.max_pairs is not None:
        pairs = pairs[: config.max_pairs]
    if len(pairs) < 2:
        raise ValueError(f"{data_dir}: {len(pairs)} training pairs; the evaluators need at least 2")
    started = time.perf_counter()
    classifier = _train_classifier(pairs, config, out_dir, progress)
    middle = time.perf_counter()
    clip = _train_clip(pairs, config, out_dir, progress)
    done = time.perf_counter()
    summary = {"_kind": "ProgEmuEvaluators", "_schema": 1, "data_dir": str(data_dir), "split": "train",
               "pairs": len(pairs), "config": config_to_dict(config),
               "training": {"classifier": {**classifier, "seconds": round(middle - started, 1)},
                            "clip": {**clip, "seconds": round(done - middle, 1)}}}
    # written last: its presence means both models are complete
    atomic_write_json(out_dir / "evaluators.json", summary)
    log.info("evaluators trained on %d pairs in %.0f s -> %s", len(pairs), done - started, out_dir)
    return out_dir


def load_train_config(path: str | Path) -> TrainEvaluatorsConfig:
    """The training config recorded in an ``evaluators.json``."""
    from progemu.utils.config import config_from_dict

    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return config_from_dict(TrainEvaluatorsConfig, data["config"], where=str(path))
