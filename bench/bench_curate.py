"""Benchmark of ``progemu curate``.

1. Registration at 512 px, ours (rigid + affine, NCC, 128 px working copies with a 2-level
   pyramid) against the official ICG-CXR settings (``formats.md`` §3: affine, MeanSquares,
   25% sampling, GD lr 1.0, 200 iterations, full resolution), on the same pairs in the same
   run: real longitudinal pairs (Hannover, first two admission days of each of 35 patients)
   and consecutive PA pairs of a synthetic world. Time = the registration itself (optimisation +
   B-spline resampling), one ITK thread; alignment = NCC (and SSIM) of prior vs follow-up.
2. ``progemu curate`` of a synthetic world (default: 500 patients at 512 px): wall time,
   pairs, count after every step (from ``dataset_card.md``).

Usage::

    OMP_NUM_THREADS=1 python bench/bench_curate.py --world /tmp/world500 [--pairs 35] [--workers 2]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path


HANNOVER = Path(os.environ.get("PROGEMU_REAL_DATA", "/work/shared/data/real")) / "hannover"


def hannover_pairs(limit: int) -> list[tuple[Path, Path]]:
    import pandas as pd

    table = pd.read_csv(HANNOVER / "data.csv")
    pairs = []
    for _, group in table.groupby("patient_id"):
        group = group.sort_values("admission_offset")
        offsets = group.admission_offset.unique()
        if len(offsets) >= 2:
            prior = group[group.admission_offset == offsets[0]].iloc[0]
            followup = group[group.admission_offset == offsets[1]].iloc[0]
            pairs.append((HANNOVER / "png" / f"{prior.image_id}.png", HANNOVER / "png" / f"{followup.image_id}.png"))
    return pairs[:limit]


def synthetic_pairs(world: Path, limit: int) -> list[tuple[Path, Path]]:
    from progemu.curate.select import select_pairs
    from progemu.data.mimic import load_mimic

    candidates, _, _ = select_pairs(load_mimic(world / "mimic-cxr-jpg"), max_days=100.0)
    return [(c.prior_image.path, c.followup_image.path) for c in candidates[:limit]]


def compare_registration(pairs: list[tuple[Path, Path]], size: int) -> dict:
    import SimpleITK as sitk

    from progemu.curate.preprocess import QualityConfig, prepare_image
    from progemu.curate.register import RegistrationConfig, register_official, register_pair
    from progemu.data.images import read_image

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    # always register (no "already aligned" shortcut) so both methods do the same work
    config = RegistrationConfig(skip_if_ssim_above=1.01)
    rows = []
    for prior_path, followup_path in pairs:
        try:  # the synthetic world has injected faults (truncated / blank images): skip them here
            prior, problem_a = prepare_image(read_image(prior_path), size, QualityConfig())
            followup, problem_b = prepare_image(read_image(followup_path), size, QualityConfig())
        except ValueError:
            continue
        if problem_a or problem_b:
            continue
        ours = register_pair(prior, followup, config)
        official = register_official(prior, followup)
        rows.append({"ncc_before": ours.ncc_before, "ssim_before": ours.ssim_before,
                     "ours_s": ours.seconds, "ours_ncc": ours.ncc_after, "ours_ssim": ours.ssim_after,
                     "official_s": official.seconds, "official_ncc": official.ncc_after,
                     "official_ssim": official.ssim_after})
    mean = {key: statistics.fmean(r[key] for r in rows) for key in rows[0]}
    mean["pairs"] = len(rows)
    mean["speedup_mean_time"] = mean["official_s"] / mean["ours_s"]
    mean["speedup_median_time"] = statistics.median(r["official_s"] for r in rows) / statistics.median(r["ours_s"] for r in rows)
    mean["ours_ncc_ge_official"] = sum(r["ours_ncc"] >= r["official_ncc"] - 1e-4 for r in rows)
    return mean


def curate_world(world: Path, out: Path, size: int, workers: int) -> dict:
    command = [sys.executable, "-m", "progemu.cli", "curate", "--mimic", str(world / "mimic-cxr-jpg"),
               "--chexpert-plus", str(world / "chexpert-plus"), "--out", str(out), "--image-size", str(size),
               "--workers", str(workers), "--quiet"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"curate failed:\n{done.stderr[-3000:]}")
    counts = {}
    for line in (out / "dataset_card.md").read_text().splitlines():
        parts = [p.strip() for p in line.strip().strip("|").split("|")]
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    return {"command": " ".join(command[1:]), "seconds": seconds, "counts": counts}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=Path, help="synthetic world (progemu synth --out DIR); curated when given")
    parser.add_argument("--pairs", type=int, default=35, help="real Hannover pairs to register (max 35)")
    parser.add_argument("--synthetic-pairs", type=int, default=20, help="synthetic pairs to register")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_curate/out"))
    parser.add_argument("--skip-curate", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the numbers as JSON here")
    args = parser.parse_args(argv)

    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
                          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}"}
    if HANNOVER.exists() and args.pairs:
        results["registration_real"] = compare_registration(hannover_pairs(args.pairs), args.size)
        print("registration, real Hannover pairs:", json.dumps(results["registration_real"], indent=1), flush=True)
    if args.world and args.synthetic_pairs:
        results["registration_synthetic"] = compare_registration(synthetic_pairs(args.world, args.synthetic_pairs), args.size)
        print("registration, synthetic pairs:", json.dumps(results["registration_synthetic"], indent=1), flush=True)
    if args.world and not args.skip_curate:
        import shutil

        shutil.rmtree(args.out, ignore_errors=True)
        results["curate"] = curate_world(args.world, args.out, args.size, args.workers)
        print("curate:", json.dumps(results["curate"], indent=1), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
