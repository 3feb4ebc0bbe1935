"""The ``progemu evaluate`` job: generate (or read cached generations), score every row, write the report.

Python entry point for other stages (``progemu demo``)::

    from progemu.evaluate.runner import EvaluateConfig, evaluate
    metrics = evaluate(EvaluateConfig(data="ds", out="eval", model="ckpt", evaluators="evaluators"))

Rows: ``progemu`` (``--model``), ``progemu2`` (the cascade, ``--cascade-image`` +
``--cascade-text``), trained diffusion baselines (``--baseline NAME=DIR``) and external methods' outputs
(``--generations NAME=DIR``; both in :mod:`progemu.baseline.rows`), and references measured in the same run: ``copy-prior`` and
``oracle`` (see :mod:`.baselines`). Image metrics use the first sample of each pair.
Writes ``OUT/metrics.json``, ``OUT/table.md``, ``OUT/report.html``, ``OUT/figures/``
and ``OUT/evaluate_config.json``; generations are cached in ``OUT/generations``
(or ``--generations DIR``, see :mod:`.generations`) so a re-run generates only what
is missing.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from progemu.data.labels import CHEXPERT_LABELS
from progemu.utils.atomic import atomic_write_json
from progemu.utils.config import save_config

from .classification import averaged_scores, finite_or_none, label_matrix, macro_scores, per_label_scores, pooled_scores
from .clip_score import clip_i
from .fid import fid_from_features

__all__ = ["EvaluateConfig", "evaluate", "METRIC_KEYS", "ROW_ORDER"]

log = logging.getLogger(__name__)

METRIC_KEYS = ("FID", "CLIP-I", "CLIP-I-followup", "AUROC", "F1", "BLEU-3", "METEOR", "ROUGE-L")
ROW_ORDER = ("progemu", "progemu2", "copy-prior", "reconstructed-prior", "oracle")


@dataclasses.dataclass
class EvaluateConfig:
    data: str
    out: str
    model: str | None = None
    split: str = "test"
    cascade_image: str | None = None
    cascade_text: str | None = None
    evaluators: str | None = None  # synthetic-world evaluators directory
    xrv_weights: str | None = None  # real evaluators
    biomedclip: str | None = None
    generations: str | None = None  # default OUT/generations
    ground_truth: str | None = None  # default: found through DATA/curate_config.json
    max_pairs: int | None = None
    samples: int = 1
    seed: int = 0
    batch_size: int = 4  # generation batch
    meteor: bool = True
    text_backend: str = "coco"  # coco (pycocoevalcap) | nltk (NLTK METEOR, rouge_score ROUGE-L) | both; see text_metrics
    pairs_list: str | None = None  # JSON list of pair JSON paths to evaluate (replaces split), like the official --meta_path
    figure_pairs: int = 4
    device: str | None = None  # evaluators' device; None = "cuda" when available, else "cpu"
    generate_kwargs: dict = dataclasses.field(default_factory=dict)  # extra generate_batch arguments (cfg_scale, ...)
    overwrite: bool = False  # discard cached generations made by another model / with other settings
    baselines: dict = dataclasses.field(default_factory=dict)  # row name -> trained baseline folder (--baseline)
    external: dict = dataclasses.field(default_factory=dict)  # row name -> external outputs folder (--generations NAME=DIR)


@dataclasses.dataclass
class _RowInputs:
    images: list | None  # per pair: path or float [H, W]
    texts: list[str] | None  # per pair interpretation
    generations: dict | None = None  # pair_id -> Generation (model rows)
    key: dict | None = None  # what made the generations (model identity, settings), when recorded


def _model_tokenizer(config: EvaluateConfig) -> Path | None:
    """The image tokenizer of the evaluated model (for the reconstructed-prior row), or None."""
    from progemu.model.checkpoint import IMAGE_TOKENIZER_DIR

    for model in (config.model, config.cascade_image):
        if model is not None and (Path(model) / IMAGE_TOKENIZER_DIR).is_dir():
            return Path(model) / IMAGE_TOKENIZER_DIR
    return None


def _load_evaluators(config: EvaluateConfig, evaluators):
    from .evaluators import load_evaluators, load_real_evaluators

    if evaluators is not None:
        return evaluators
    if config.evaluators:
        return load_evaluators(config.evaluators)
    if config.xrv_weights or config.biomedclip:
        return load_real_evaluators(config.xrv_weights, config.biomedclip)
    raise ValueError("no evaluators: pass --evaluators DIR (synthetic world; make them with `progemu evaluate "
                     "train-evaluators --data DATA --out DIR`) or --xrv-weights FILE --biomedclip DIR (real data)")


#: how a user sets each part of a generation key (for the one-line refusal)
_KEY_NAMES = {"models.model": "--model", "models.cascade_image": "--cascade-image", "models.cascade_text": "--cascade-text",
              "samples": "--samples", "seed": "--seed", "data": "--data (its manifest.jsonl)",
              "generate_kwargs.cfg_scale": "--cfg"}


def generation_key(config: EvaluateConfig, models: dict[str, str | None]) -> dict:
    """What makes a row's generations: model identities, sampling settings, the dataset's manifest."""
    from progemu.utils.identity import checkpoint_identity, dataset_identity

    return {"models": {flag: (checkpoint_identity(path) if path else None) for flag, path in models.items()},
            "samples": config.samples, "seed": config.seed,
            "generate_kwargs": {k: config.generate_kwargs[k] for k in sorted(config.generate_kwargs)},
            "data": dataset_identity(config.data)}


def _key_names(config: EvaluateConfig) -> dict:
    names = dict(_KEY_NAMES)
    names.update({f"generate_kwargs.{k}": f"--gen-option {k}" for k in config.generate_kwargs if k != "cfg_scale"})
    return names


def _model_row(name: str, cache_root: Path, pairs, make_pipeline: Callable | None, config: EvaluateConfig,
               progress: bool, models: dict[str, str | None] | None = None) -> _RowInputs:
    from .generations import GenerationCache, generate_missing

    # a model (or a pipeline factory) generates: key the cache by it; a cache alone is read as it is
    key = generation_key(config, models or {}) if make_pipeline is not None else None
    cache = GenerationCache(cache_root, name, key=key)
    cache.claim(overwrite=config.overwrite, names=_key_names(config))
    missing = [p for p in pairs if p.pair_id not in cache.records()]
    if missing:
        if make_pipeline is None:
            raise FileNotFoundError(f"{cache.index_path}: {len(missing)} of {len(pairs)} pairs have no generation "
                                    f"(first: {missing[0].pair_id}) and no model was given to generate them")
        generate_missing(cache, pairs, make_pipeline, samples=config.samples, seed=config.seed,
                         batch_size=config.batch_size, progress=progress, attention_pairs=config.figure_pairs,
                         generate_kwargs=config.generate_kwargs)
    records = cache.records()
    generations = {p.pair_id: cache.read(p.pair_id, records[p.pair_id]) for p in pairs}
    return _RowInputs(images=[generations[p.pair_id].counterfactuals[0] for p in pairs],
                      texts=[generations[p.pair_id].interpretation or "" for p in pairs], generations=generations,
                      key=cache.recorded_key())


def _baseline_rows(config: EvaluateConfig, pairs, cache_root: Path, progress: bool) -> dict[str, _RowInputs]:
    """Rows of trained diffusion baselines (``--baseline``) and of external methods' outputs (``--generations
    NAME=DIR``); image-only unless the external folder holds every interpretation (see progemu.baseline.rows)."""
    rows: dict[str, _RowInputs] = {}
    if config.baselines:
        from progemu.baseline.rows import baseline_row

        from .fidelity import find_ground_truth

        ground_truth = find_ground_truth(config.data, config.ground_truth)
        for name, directory in config.baselines.items():
            row, generations, key = baseline_row(name, directory, pairs, cache_root, data=config.data,
                                                 ground_truth=ground_truth, seed=config.seed, samples=config.samples,
                                                 overwrite=config.overwrite, progress=progress)
            rows[row] = _RowInputs(images=[generations[p.pair_id].counterfactuals[0] for p in pairs], texts=None,
                                   generations=generations, key=key)
    if config.external:
        from progemu.baseline.rows import read_external

        for name, directory in config.external.items():
            images, texts = read_external(name, directory, pairs)
            rows[name] = _RowInputs(images=images, texts=texts)
    return rows


def _image_outputs(evaluators, images: Sequence, size: int, chunk: int = 64) -> dict[str, np.ndarray]:
    """Classifier features / probabilities and CLIP image embeddings, computed ``chunk`` images at a time."""
    from .images import load_stack

    parts: dict[str, list] = {"features": [], "probs": [], "clip": []}
    for start in range(0, len(images), chunk):
        stack = load_stack(images[start:start + chunk], size)
        parts["features"].append(evaluators.features(stack))
        parts["probs"].append(evaluators.probabilities(stack))
        if evaluators.clip_model is not None:
            parts["clip"].append(evaluators.image_embeddings(stack))
    return {k: np.concatenate(v) if v else None for k, v in parts.items()}


def _score_row(outputs: dict, reference: dict, texts: list[str] | None, scorer, *, is_oracle: bool) -> dict:
    """Every metric of one row; ``reference`` holds the follow-up outputs, targets and text."""
    row: dict = {key: None for key in METRIC_KEYS}
    per_label = per_label_scores(outputs["probs"], reference["targets"], CHEXPERT_LABELS)
    macro = macro_scores(per_label)
    row["AUROC"], row["F1"] = macro["AUROC"], macro["F1"]
    if not is_oracle:  # the oracle's images ARE the reference set: 0 and 100 by construction
        row["FID"] = fid_from_features(outputs["features"], reference["outputs"]["features"]) \
            if len(outputs["features"]) >= 2 else None
        if outputs["clip"] is not None:
            row["CLIP-I-followup"] = clip_i(outputs["clip"], reference["outputs"]["clip"])
    if outputs["clip"] is not None:
        row["CLIP-I"] = clip_i(outputs["clip"], reference["prompt_embeddings"])
    if texts is not None:
        row.update(scorer.score(texts, reference["interpretations"]))
    changed = pooled_scores(outputs["probs"], reference["targets"], mask=reference["changed_mask"])
    averaged = averaged_scores(outputs["probs"], reference["targets"], CHEXPERT_LABELS, per_label=per_label)
    return {"metrics": {k: finite_or_none(v) for k, v in row.items()}, "per_label": per_label,
            "labels_scored": macro["labels"], "changed": changed, "classification": averaged}


def evaluate(config: EvaluateConfig, *, evaluators=None, progress: bool = True,
             make_pipeline: Callable | None = None, make_cascade: Callable | None = None) -> dict:
    """Run the whole evaluation; returns the ``metrics.json`` dict (also written to ``config.out``).

    ``evaluators``: an :class:`~progemu.evaluate.evaluators.Evaluators` (else loaded from the config).
    ``make_pipeline`` / ``make_cascade``: override how the generation pipelines are built
    (default: ``ProgEmuPipeline.from_pretrained(config.model)`` and
    ``CascadePipeline(config.cascade_image, config.cascade_text)``).
    """
    from progemu.data.icgcxr import load_pairs

    from .baselines import retrieval_interpretations
    from .fidelity import changed_regions, classifier_fidelity, direct_fidelity, find_ground_truth
    from .images import load_image
    from .preservation import mean_prior_ncc
    from .text_metrics import TextScorer

    started = time.perf_counter()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "evaluate_config.json", kind="EvaluateConfig")
    pairs = load_pairs(config.data, split=config.split, pairs_list=config.pairs_list)
    if config.max_pairs is not None:
        pairs = pairs[: config.max_pairs]
    if len(pairs) < 2:
        raise ValueError(f"{config.data}: split {config.split!r} has {len(pairs)} pairs; evaluation needs at least 2")
    cache_root = Path(config.generations) if config.generations else out / "generations"
    # generations made by another model / with other settings are refused now, before anything slow loads
    from .generations import GenerationCache

    for row, builder, models in (("progemu", make_pipeline or config.model, {"model": config.model}),
                                 ("progemu2", make_cascade or (config.cascade_image and config.cascade_text),
                                  {"cascade_image": config.cascade_image, "cascade_text": config.cascade_text})):
        if builder:
            GenerationCache(cache_root, row, key=generation_key(config, models)).claim(
                overwrite=config.overwrite, names=_key_names(config))
    if config.external:  # an external folder missing a pair is named now, before anything slow loads
        from progemu.baseline.rows import check_external

        for name, directory in config.external.items():
            check_external(name, directory, pairs)
    evaluators = _load_evaluators(config, evaluators)
    # report.html is this folder's "done" marker (written last): a run that stops early must not leave
    # the previous run's report vouching for a half-updated folder
    (out / "report.html").unlink(missing_ok=True)
    if config.device is not None or evaluators.device == "cpu":
        import torch

        evaluators.to(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    size = load_image(pairs[0].followup_image).shape[0]

    # ---- rows' inputs -------------------------------------------------------------------------
    rows: dict[str, _RowInputs] = {}
    if config.model is not None or make_pipeline is not None or (cache_root / "progemu" / "index.jsonl").exists():
        if make_pipeline is None and config.model is not None:
            def make_pipeline():
                from progemu.generate.pipeline import ProgEmuPipeline

                return ProgEmuPipeline.from_pretrained(config.model)
        rows["progemu"] = _model_row("progemu", cache_root, pairs, make_pipeline, config, progress,
                                     models={"model": config.model})
    if (config.cascade_image and config.cascade_text) or make_cascade is not None \
            or (cache_root / "progemu2" / "index.jsonl").exists():
        if make_cascade is None and config.cascade_image and config.cascade_text:
            def make_cascade():
                from progemu.generate.pipeline import CascadePipeline

                return CascadePipeline(config.cascade_image, config.cascade_text)
        rows["progemu2"] = _model_row("progemu2", cache_root, pairs, make_cascade, config, progress,
                                      models={"cascade_image": config.cascade_image, "cascade_text": config.cascade_text})
    rows.update(_baseline_rows(config, pairs, cache_root, progress))
    try:
        retrieved = retrieval_interpretations(load_pairs(config.data, split="train", check_files=False),
                                              [p.prompt for p in pairs])
    except ValueError as error:  # no usable training pairs: the retrieval half of the baseline cannot exist
        log.warning("copy-prior has no retrieved interpretations (text metrics null): %s", error)
        retrieved = None
    rows["copy-prior"] = _RowInputs(images=[p.prior_image for p in pairs], texts=retrieved)
    tokenizer_dir = _model_tokenizer(config)
    if tokenizer_dir is not None:
        from .preservation import reconstructed_priors

        rows["reconstructed-prior"] = _RowInputs(images=reconstructed_priors(tokenizer_dir, [p.prior_image for p in pairs]),
                                                 texts=retrieved)
    rows["oracle"] = _RowInputs(images=[p.followup_image for p in pairs], texts=None)

    # ---- reference (real follow-up) ------------------------------------------------------------
    targets = label_matrix([p.followup_labels for p in pairs], CHEXPERT_LABELS)
    prior_targets = label_matrix([p.prior_labels for p in pairs], CHEXPERT_LABELS)
    reference = {
        "outputs": _image_outputs(evaluators, [p.followup_image for p in pairs], size),
        "targets": targets,
        "changed_mask": ~np.isnan(targets) & ~np.isnan(prior_targets) & (targets != prior_targets),
        "interpretations": [p.interpretation for p in pairs],
        "prompt_embeddings": evaluators.text_embeddings([p.prompt for p in pairs]) if evaluators.clip_model is not None else None,
    }
    prior_outputs = _image_outputs(evaluators, [p.prior_image for p in pairs], size)

    ground_truth = find_ground_truth(config.data, config.ground_truth)
    result: dict = {"rows": {}, "changed_findings": {}, "fidelity": {}, "fidelity_detail": {}, "per_finding": {},
                    "classification": {}}
    with TextScorer(meteor=config.meteor, backend=config.text_backend) as scorer:
        result["text_backend"] = scorer.description()
        for name, inputs in rows.items():
            # the reference rows' images were scored above: reuse them (real evaluators are slow on CPU)
            outputs = {"copy-prior": prior_outputs, "oracle": reference["outputs"]}.get(name) \
                or _image_outputs(evaluators, inputs.images, size)
            scored = _score_row(outputs, reference, inputs.texts, scorer, is_oracle=name == "oracle")
            result["rows"][name] = scored["metrics"]
            result["per_finding"][name] = scored["per_label"]
            result["classification"][name] = scored["classification"]
            result["changed_findings"][name] = {k: finite_or_none(v) if k != "n" else v for k, v in scored["changed"].items()}
            detail = {"classifier": classifier_fidelity(prior_outputs["probs"], outputs["probs"], prior_targets, targets)}
            detail["method"] = "classifier"
            if ground_truth is not None:
                try:
                    images = [load_image(x) if isinstance(x, (str, Path)) else x for x in inputs.images]
                    detail["direct"] = direct_fidelity(pairs, images, ground_truth)
                    detail["method"] = "direct"
                except (ImportError, AttributeError, TypeError) as error:
                    detail["direct_error"] = f"direct measurement unavailable: {error}"
            result["rows"][name]["NCC-prior"] = mean_prior_ncc([p.prior_image for p in pairs], inputs.images, size)
            result["fidelity_detail"][name] = detail
            result["fidelity"][name] = finite_or_none(detail[detail["method"]]["score"])
    result.update({
        "n_pairs": len(pairs), "split": config.split if config.pairs_list is None else f"pairs list {config.pairs_list}",
        "samples": config.samples, "seed": config.seed,
        "generation": {name: inputs.key for name, inputs in rows.items() if inputs.generations is not None},
        "evaluators": evaluators.description, "ground_truth": str(ground_truth) if ground_truth else None,
        "definitions": {
            "FID": "Frechet distance of pathology-classifier features (features2), counterfactuals vs real follow-ups",
            "CLIP-I": "100 x cosine(CLIP image embedding of the counterfactual, CLIP text embedding of the prompt)",
            "CLIP-I-followup": "100 x cosine(counterfactual image embedding, real follow-up image embedding)",
            "AUROC/F1": "classifier on counterfactuals vs follow-up CheXpert labels; per label, uncertain/missing "
                        "excluded, labels with one class skipped, macro mean; F1 at 0.5 (micro and weighted "
                        "averages in `classification`)",
            "changed_findings": "AUROC/F1 pooled over (pair, label) entries whose known label differs between "
                                "prior and follow-up",
            "text": "see `text_backend`; coco: pycocoevalcap BLEU-3 (corpus), METEOR 1.5, ROUGE-L (beta 1.2) on "
                    "lower-cased, punctuation-free tokens; nltk: NLTK METEOR and rouge_score ROUGE-L F1 as Hugging "
                    "Face evaluate computes them",
            "fidelity": "fraction of true changes the counterfactual moves in the right direction vs the prior",
            "NCC-prior": "mean zero-mean normalised cross-correlation of prior and counterfactual (1 = the prior kept)",
            "reconstructed-prior": "decode(encode(prior)) with the model's image tokenizer + retrieved interpretation: "
                                   "what a token model can at best preserve",
        },
        "seconds": round(time.perf_counter() - started, 1),
    })
    atomic_write_json(out / "metrics.json", result)
    from .report import write_report

    boxes = None
    if ground_truth is not None:
        try:
            boxes = changed_regions(pairs[: config.figure_pairs], ground_truth)
        except (ImportError, AttributeError, TypeError, ValueError) as error:
            log.warning("figures zoom on the largest difference instead of the changed finding: %s", error)
    write_report(out, result, pairs, rows, size=size, figure_pairs=config.figure_pairs, boxes=boxes)
    return result
