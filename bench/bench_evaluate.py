"""Benchmark of ``progemu evaluate``: metric speed vs reference paths, evaluator training and quality.

1. FID on 1024-d features (the real DenseNet's size), N = 760 per set (the paper's test split):
   ours (scipy ``sqrtm``) vs torchmetrics' ``_compute_fid`` (reference), time and |difference|.
2. Text metrics on 760 real Open-i report pairs (torchxrayvision's bundled reports): our
   ``TextScorer`` (one METEOR JVM, in-process tokenisation) vs the usual COCO-caption path
   (``PTBTokenizer`` JVM + a new ``Meteor()`` JVM per call), time and values; and the ``nltk``
   backend (NLTK METEOR, rouge_score ROUGE-L) on the same pairs.
3. Synthetic-world evaluators: training time on a world's training split and quality on a
   second, independent world (held out): classifier macro AUROC on follow-up images, CLIP
   matched-vs-mismatched prompt gap (100 x cosine) and median rank of the true prompt.
4. ``evaluate`` wall time with the reference rows (copy-prior, oracle) on the first world's test split.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_evaluate.py --data DS --heldout DS2 [--work DIR]
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_evaluate.py --text-only     # part 2 alone

``--data`` / ``--heldout``: curated datasets (e.g. ``progemu synth --patients 200 --image-size 256`` +
``progemu curate --image-size 256``; the held-out world with another ``--seed``).
"""
from __future__ import annotations

import argparse
import json
import re
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np


def bench_fid(n: int = 760, dim: int = 1024) -> dict:
    import torch
    from torchmetrics.image.fid import _compute_fid

    from progemu.evaluate.fid import fid_from_features, gaussian_statistics

    rng = np.random.default_rng(0)
    mixing = rng.standard_normal((dim, dim)) / np.sqrt(dim)
    a = np.maximum(rng.standard_normal((n, dim)) @ mixing, 0)  # ReLU-pooled-like features
    b = np.maximum((rng.standard_normal((n, dim)) + 0.1) @ mixing, 0)
    start = time.perf_counter()
    ours = fid_from_features(a, b)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    (mu1, s1), (mu2, s2) = gaussian_statistics(a), gaussian_statistics(b)
    reference = float(_compute_fid(torch.tensor(mu1), torch.tensor(s1), torch.tensor(mu2), torch.tensor(s2)))
    reference_s = time.perf_counter() - start
    return {"n": n, "dim": dim, "ours": ours, "torchmetrics": reference, "abs_diff": abs(ours - reference),
            "ours_s": ours_s, "torchmetrics_s": reference_s}


def openi_reports(limit: int) -> list[str]:
    import torchxrayvision

    path = Path(torchxrayvision.__file__).parent / "data" / "NLMCXR_reports.tgz"
    texts = []
    with tarfile.open(path) as archive:
        for member in archive:
            if not member.isfile():
                continue
            xml = archive.extractfile(member).read().decode("utf-8", "ignore")
            match = re.search(r'Label="FINDINGS">(.*?)</AbstractText>', xml, re.S)
            if match and len(match.group(1).split()) > 5:
                texts.append(" ".join(match.group(1).split()))
            if len(texts) >= limit + 1:
                break
    return texts


def bench_text(n: int = 760) -> dict:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    from progemu.evaluate.text_metrics import TextScorer

    reports = openi_reports(n)
    references, candidates = reports[:n], reports[1:n + 1]  # each report scored against the next one
    start = time.perf_counter()
    with TextScorer() as scorer:
        ours = scorer.score(candidates, references)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    gts = PTBTokenizer().tokenize({i: [{"caption": r}] for i, r in enumerate(references)})
    res = PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(candidates)})
    bleu, _ = Bleu(3).compute_score(gts, res, verbose=0)
    meteor, _ = Meteor().compute_score(gts, res)
    rouge, _ = Rouge().compute_score(gts, res)
    reference_s = time.perf_counter() - start
    # the nltk backend (NLTK METEOR with packaged WordNet, rouge_score ROUGE-L), as Hugging Face evaluate computes it
    start = time.perf_counter()
    with TextScorer(backend="nltk") as scorer:
        nltk_scores = scorer.score(candidates, references)
        nltk_backend = scorer.description()
    nltk_s = time.perf_counter() - start
    return {"n": n, "ours": ours, "coco_path": {"BLEU-3": bleu[2], "METEOR": meteor, "ROUGE-L": rouge},
            "ours_s": ours_s, "coco_path_s": reference_s, "nltk": nltk_scores, "nltk_s": nltk_s,
            "nltk_backend": nltk_backend}


def bench_evaluators(data: str, heldout: str, work: Path) -> dict:
    import torch

    from progemu.data.icgcxr import load_pairs
    from progemu.data.labels import CHEXPERT_LABELS
    from progemu.evaluate.classification import label_matrix, macro_scores, per_label_scores
    from progemu.evaluate.evaluators import load_evaluators, train_evaluators
    from progemu.evaluate.images import load_stack

    torch.set_num_threads(1)
    start = time.perf_counter()
    directory = train_evaluators(data, work / "evaluators", progress=False)
    seconds = time.perf_counter() - start
    summary = json.loads((directory / "evaluators.json").read_text())
    evaluators = load_evaluators(directory)
    pairs = load_pairs(heldout)
    images = load_stack([p.followup_image for p in pairs], 128)
    per = per_label_scores(evaluators.probabilities(images), label_matrix([p.followup_labels for p in pairs], CHEXPERT_LABELS),
                           CHEXPERT_LABELS)
    image_embeddings = evaluators.image_embeddings(images)
    text_embeddings = evaluators.text_embeddings([p.prompt for p in pairs])
    image_embeddings /= np.linalg.norm(image_embeddings, axis=1, keepdims=True)
    text_embeddings /= np.linalg.norm(text_embeddings, axis=1, keepdims=True)
    similarity = image_embeddings @ text_embeddings.T
    ranks = (similarity > np.diag(similarity)[:, None]).sum(1)
    return {"train_pairs": summary["pairs"], "train_seconds": seconds, "training": summary["training"],
            "heldout_pairs": len(pairs), "classifier_macro": macro_scores(per),
            "classifier_per_label": {k: v["AUROC"] for k, v in per.items() if v["AUROC"] is not None},
            "clip_gap": float(100 * (np.diag(similarity).mean() - similarity.mean())),
            "clip_median_rank": float(np.median(ranks)), "clip_chance_rank": (len(pairs) - 1) / 2}


def bench_evaluate(data: str, work: Path) -> dict:
    from progemu.evaluate.runner import EvaluateConfig, evaluate

    start = time.perf_counter()
    metrics = evaluate(EvaluateConfig(data=data, out=str(work / "eval"), evaluators=str(work / "evaluators")), progress=False)
    return {"seconds": time.perf_counter() - start, "n_pairs": metrics["n_pairs"], "rows": metrics["rows"],
            "changed_findings": metrics["changed_findings"], "fidelity": metrics["fidelity"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data")
    parser.add_argument("--heldout")
    parser.add_argument("--work")
    parser.add_argument("--text-only", action="store_true", help="only part 2 (text metrics on Open-i), no dataset needed")
    args = parser.parse_args()
    if args.text_only:
        print(json.dumps(bench_text(), indent=1))
        return
    if not args.data or not args.heldout:
        parser.error("--data and --heldout are required (unless --text-only)")
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-evaluate-"))
    results = {"fid": bench_fid()}
    print(json.dumps(results["fid"], indent=1), flush=True)
    results["text"] = bench_text()
    print(json.dumps(results["text"], indent=1), flush=True)
    results["evaluators"] = bench_evaluators(args.data, args.heldout, work)
    print(json.dumps(results["evaluators"], indent=1), flush=True)
    results["evaluate"] = bench_evaluate(args.data, work)
    print(json.dumps(results["evaluate"], indent=1), flush=True)
    (work / "bench_evaluate.json").write_text(json.dumps(results, indent=1))
    print(f"results: {work / 'bench_evaluate.json'}")


if __name__ == "__main__":
    main()
