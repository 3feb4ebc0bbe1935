"""Benchmark the real-anatomy world: does ``measure_finding`` see the inserted changes, does the anatomy stay the base's?

1. Writes a world with ``progemu synth --anatomy real`` (timed).
2. For every pair of consecutive studies of a patient and every finding key, the measured change
   ``measure_finding(follow-up image, follow-up) - measure_finding(prior image, prior)`` (each image in
   its own frame, the other study as reference for locating absent findings). AUROC of ``|change|``
   separating true changes (severity differs) from stable findings (same severity, present or absent),
   per finding kind (left and right pooled), over all pairs and over the "isolated" ones (no other
   finding whose box overlaps this one's changed in the pair: no cross-talk); also the fraction of
   true changes whose measured sign is right. Stable means the same grade, as in direct fidelity
   (so a lesion growing within its grade counts as stable); for support devices the same device list.
3. NCC between every readable frontal image and its base image (the shipped 256 px radiograph resized to
   the image size; nothing undone: no pose, deformation or exposure is inverted).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_synth_real.py [--patients 300] [--image-size 128] [--workers 2]
"""
from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from progemu.synth.findings import key_kind


def _auroc(positive: list[float], negative: list[float]) -> float | None:
    if not positive or not negative:
        return None
    scores = np.concatenate([positive, negative])
    ranks = np.empty(len(scores))
    order = np.argsort(scores, kind="mergesort")
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):  # average ranks of ties
        tie = scores == value
        ranks[tie] = ranks[tie].mean()
    n_pos = len(positive)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * len(negative)))


def _load(path: Path) -> np.ndarray | None:
    try:
        return np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0
    except OSError:
        return None


def measure(world: Path) -> dict:
    from progemu.synth.findings import FINDING_KEYS
    from progemu.synth.real_assets import load_base
    from progemu.synth.truth import finding_regions, load_ground_truth, measure_finding

    truths = load_ground_truth(world)
    by_patient = defaultdict(list)
    for t in truths.values():
        by_patient[(t.dataset, t.subject_id)].append(t)
    changes = defaultdict(lambda: ([], []))  # kind -> (changed |d|, stable |d|)
    isolated = defaultdict(lambda: ([], []))  # the same, no other changed finding's box overlapping
    signs = defaultdict(list)
    ncc = []
    images = {}
    for studies in by_patient.values():
        studies.sort(key=lambda t: t.study_order)
        for t in studies:
            image = _load(t.frontal_image) if "blank_image" not in t.faults else None
            images[t.key] = image
            if image is not None and "anatomy_id" in t.raw:
                base = load_base(t.raw["anatomy_id"])[0]
                base = np.asarray(Image.fromarray(base).resize(image.shape[::-1], Image.BILINEAR))
                ncc.append(float(np.corrcoef(image.ravel(), base.ravel())[0, 1]))
        for prior, follow in zip(studies, studies[1:]):
            a, b = images[prior.key], images[follow.key]
            if a is None or b is None:
                continue
            boxes = finding_regions(follow, prior)
            moved = [k for k in FINDING_KEYS if _state(prior, k) != _state(follow, k)]
            for key in FINDING_KEYS:
                try:
                    d = measure_finding(b, follow, key, prior) - measure_finding(a, prior, key, follow)
                except ValueError:
                    continue
                before, after = prior.state[key].severity, follow.state[key].severity
                kind = key_kind(key)
                changed = _state(prior, key) != _state(follow, key)
                changes[kind][0 if changed else 1].append(abs(d))
                if not any(_overlap(boxes[key], boxes[k]) for k in moved if k != key):
                    isolated[kind][0 if changed else 1].append(abs(d))
                if changed and key != "support_devices":
                    signs[kind].append(bool(np.sign(d) == np.sign(after - before)))
    per_kind = {}
    for kind, (pos, neg) in sorted(changes.items()):
        ipos, ineg = isolated[kind]
        per_kind[kind] = {"auroc": _auroc(pos, neg), "changed": len(pos), "stable": len(neg),
                          "auroc_isolated": _auroc(ipos, ineg), "changed_isolated": len(ipos),
                          "stable_isolated": len(ineg),
                          "sign_right": float(np.mean(signs[kind])) if signs[kind] else None}
    out = {"per_kind": per_kind, "frontals": len(ncc)}
    if ncc:
        out.update(ncc_mean=float(np.mean(ncc)), ncc_min=float(np.min(ncc)), ncc_p10=float(np.percentile(ncc, 10)))
    return out


def _state(truth, key: str):
    """What must stay equal for a finding to be stable: the device list, else the grade (as direct fidelity)."""
    finding = truth.state[key]
    return finding.location if key == "support_devices" else finding.severity


def _overlap(a: tuple, b: tuple) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--world", help="measure this existing world instead of writing one")
    args = parser.parse_args(argv)
    from progemu.synth.writer import RealSynthConfig, write_world

    tmp = None
    if args.world:
        world, seconds = Path(args.world), None
    else:
        tmp = Path(tempfile.mkdtemp(prefix="bench_synth_real_"))
        world = tmp / "world"
        start = time.perf_counter()
        write_world(RealSynthConfig(patients=args.patients, image_size=args.image_size, seed=args.seed), world,
                    workers=args.workers, progress=False)
        seconds = time.perf_counter() - start
    try:
        result = measure(world)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"machine: {platform.node()}, {platform.processor() or platform.machine()}")
    if seconds is not None:
        print(f"world: {args.patients} patients at {args.image_size} px, seed {args.seed}, "
              f"{args.workers} workers: {seconds:.1f} s")
    print("| finding | AUROC, all pairs | changed / stable | AUROC, isolated | changed / stable | sign right |")
    print("| --- | --- | --- | --- | --- | --- |")
    for kind, r in result["per_kind"].items():
        auroc = "-" if r["auroc"] is None else f"{r['auroc']:.3f}"
        iso = "-" if r["auroc_isolated"] is None else f"{r['auroc_isolated']:.3f}"
        sign = "-" if r["sign_right"] is None else f"{r['sign_right']:.3f}"
        print(f"| {kind} | {auroc} | {r['changed']} / {r['stable']} | {iso} | {r['changed_isolated']} / "
              f"{r['stable_isolated']} | {sign} |")
    if "ncc_mean" not in result:
        return 0
    print(f"NCC frontal vs base image (resized, nothing undone), {result['frontals']} images: mean "
          f"{result['ncc_mean']:.3f}, 10th percentile {result['ncc_p10']:.3f}, min {result['ncc_min']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
