"""Benchmark the image tokenizer on the synthetic world: quality, codebook use, speed, small findings.

    python bench/bench_tokenizer.py --world /tmp/tokworld --tokenizer runs/demo_tokenizer \
        [--train-steps 1200] [--threads 1] [--out bench/results/tokenizer.md]

1. the training world's FRONTAL images (the views that curation pairs) are linked into
   ``WORK/frontal/<patient>/``; if ``--tokenizer`` does not exist it is trained there (``--train-steps``);
2. a second world (``--seed 1``) gives unseen patients; on all its frontal images: PSNR / SSIM
   (scikit-image), codebook usage, encode and encode->decode images/s, and a reference measured
   in the same run: a bilinear 16x16 thumbnail (256 8-bit values = 2,048 bits per image, vs
   256 codes x 9 bits = 2,304 bits for 512 codes);
3. small findings: ``progemu.synth.truth.measure_finding`` for pleural effusion, as the change
   between consecutive studies of a patient (none -> none, none -> small, none -> larger), in the
   originals and in the reconstructions: does a new small effusion still show after encode->decode?
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def link_frontal(world: Path, work: Path, name: str = "frontal") -> Path:
    folder = work / name
    for line in (world / "ground_truth.jsonl").read_text().splitlines():
        record = json.loads(line)
        source = world / record["frontal_image"]
        target = folder / f"{record['dataset']}_{record['subject_id']}" / f"s{record['study_id']}{source.suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            os.symlink(source, target)
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", default="/tmp/tokworld")
    parser.add_argument("--work", default="/tmp/tokbench")
    parser.add_argument("--tokenizer", default="runs/demo_tokenizer")
    parser.add_argument("--eval-world", default="/tmp/tokworld_eval", help="held-out world (seed 1), made if missing")
    parser.add_argument("--eval-patients", type=int, default=120)
    parser.add_argument("--train-steps", type=int, default=1200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="bench/results/tokenizer.md")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from PIL import Image

    from progemu.synth.truth import load_ground_truth, measure_finding
    from progemu.tokenizer.evaluate import codebook_stats, reconstruction_metrics
    from progemu.utils.atomic import atomic_save_png
    from progemu.tokenizer.images import dataset_images, load_image
    from progemu.tokenizer.vqvae import ImageTokenizer

    world, work, tok_dir = Path(args.world), Path(args.work), Path(args.tokenizer)
    eval_world = Path(args.eval_world)
    if not (world / "ground_truth.jsonl").exists():
        subprocess.run([sys.executable, "-m", "progemu.cli", "synth", "--out", str(world), "--patients", "200",
                        "--image-size", "128", "--quiet"], check=True)
    frontal = link_frontal(world, work)
    if not (tok_dir / "model.safetensors").exists():
        subprocess.run([sys.executable, "-m", "progemu.cli", "tokenizer", "train", "--data", str(frontal), "--out",
                        str(tok_dir), "--preset", "demo", "--max-steps", str(args.train_steps), "--threads",
                        str(args.threads), "--quiet"] + (["--resume"] if (tok_dir / "checkpoint.pt").exists() else []),
                       check=True)
    tokenizer = ImageTokenizer.from_pretrained(tok_dir)
    summary = json.loads((tok_dir / "train_summary.json").read_text()) if (tok_dir / "train_summary.json").exists() else {}

    # held-out evaluation on a second world (another seed): every patient is unseen in training
    if not (eval_world / "ground_truth.jsonl").exists():
        subprocess.run([sys.executable, "-m", "progemu.cli", "synth", "--out", str(eval_world), "--patients",
                        str(args.eval_patients), "--image-size", "128", "--seed", "1", "--quiet"], check=True)
    eval_frontal = link_frontal(eval_world, work, "eval_frontal")
    paths = dataset_images(eval_frontal)
    originals, kept = [], []
    for path in paths:
        try:
            originals.append(load_image(path, tokenizer.image_size))
            kept.append(path)
        except ValueError:
            continue  # the synthetic world contains deliberately truncated files
    originals = np.stack(originals)
    batch = torch.from_numpy(originals)[:, None]
    begin = time.perf_counter()
    codes = tokenizer.encode(batch, batch_size=16)
    encode_s = time.perf_counter() - begin
    begin = time.perf_counter()
    recons = tokenizer.decode(codes, batch_size=16)[:, 0].numpy()
    decode_s = time.perf_counter() - begin
    result = {"images": len(kept), **reconstruction_metrics(originals, recons), **codebook_stats(codes.numpy(), tokenizer.codebook_size),
              "images_per_s": len(kept) / (encode_s + decode_s)}
    encode_ips = len(kept) / encode_s
    for row in range(3):
        strip = np.concatenate([originals[row], recons[row], np.clip(4 * np.abs(originals[row] - recons[row]), 0, 1)], axis=1)
        atomic_save_png(work / "examples" / f"example_{row}.png", strip)
    # reference: a bilinear thumbnail with the same number of values as there are codes
    side = tokenizer.grid[0]
    thumbs = np.stack([np.asarray(Image.fromarray(np.rint(o * 255).astype(np.uint8)).resize((side, side), Image.Resampling.BILINEAR)
                                  .resize(o.shape[::-1], Image.Resampling.BILINEAR), dtype=np.float32) / 255 for o in originals])
    reference = reconstruction_metrics(originals, thumbs)

    # small findings: the change of the effusion measurement between consecutive studies of one patient,
    # in the originals and in the reconstructions (paired, so patient-to-patient variation cancels)
    truth = load_ground_truth(eval_world)
    row_of = {f"{p.parent.name}/{p.stem}": row for row, p in enumerate(kept)}
    series: dict = {}
    for record in truth.values():
        series.setdefault((record.dataset, record.subject_id), []).append(record)
    changes: dict[str, list[tuple[float, float]]] = {"0->0": [], "0->1": [], "0->2+": []}
    for (dataset, subject), studies in series.items():
        studies.sort(key=lambda t: t.study_order)
        for prior, follow in zip(studies, studies[1:]):
            rows = [row_of.get(f"{dataset}_{subject}/s{t.study_id}") for t in (prior, follow)]
            if None in rows:
                continue
            for side_name in ("left", "right"):
                key = f"pleural_effusion_{side_name}"
                before, after = prior.state[key].severity, follow.state[key].severity
                if before != 0:
                    continue
                kind = "0->0" if after == 0 else "0->1" if after == 1 else "0->2+"
                try:
                    d_orig = measure_finding(originals[rows[1]], follow, key, prior) - measure_finding(originals[rows[0]], prior, key, follow)
                    d_recon = measure_finding(recons[rows[1]], follow, key, prior) - measure_finding(recons[rows[0]], prior, key, follow)
                except ValueError:
                    continue
                changes[kind].append((d_orig, d_recon))
    effusion = {kind: {"n": len(v), "change_original": float(np.mean([a for a, _ in v])) if v else None,
                       "change_reconstruction": float(np.mean([b for _, b in v])) if v else None,
                       "sd_original": float(np.std([a for a, _ in v])) if v else None,
                       "sd_reconstruction": float(np.std([b for _, b in v])) if v else None} for kind, v in changes.items()}
    separation = {}
    if changes["0->1"] and changes["0->0"]:
        from scipy.stats import mannwhitneyu

        for name, column in (("original", 0), ("reconstruction", 1)):
            new = [c[column] for c in changes["0->1"]]
            same = [c[column] for c in changes["0->0"]]
            # AUROC of "a small effusion appeared" vs "still none" from the measured change alone
            separation[name] = float(mannwhitneyu(new, same).statistic / (len(new) * len(same)))
    every = [c for v in changes.values() for c in v]
    correlation = float(np.corrcoef([a for a, _ in every], [b for _, b in every])[0, 1]) if len(every) > 2 else None

    report = {"tokenizer": str(tok_dir), "identity": tokenizer.identity, "eval": result, "encode_images_per_s": encode_ips,
              "reference_thumbnail": reference, "effusion_change": effusion, "effusion_change_correlation": correlation,
              "small_effusion_auroc": separation,
              "train_summary": {k: summary.get(k) for k in ("steps", "train_images", "train_images_per_s", "crop_size")},
              "threads": args.threads, "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    size_mb = sum(p.stat().st_size for p in tok_dir.glob("*") if p.name in {"config.json", "model.safetensors",
                                                                            "progemu_tokenizer.json"}) / 1e6
    lines = [
        "# Image tokenizer benchmark (`bench/bench_tokenizer.py`)",
        "",
        f"Command: `python bench/bench_tokenizer.py --world {world} --eval-world {eval_world} --tokenizer {tok_dir} "
        f"--threads {args.threads}`  ",
        f"Machine: 2-core CPU shared with other jobs ({report['machine']}; load average {os.getloadavg()[0]:.1f} at the "
        f"end), torch threads {args.threads}.  ",
        f"Tokenizer: `{tok_dir}` (identity `{tokenizer.identity}`, preset `{tokenizer.config.name}`, {tokenizer.image_size} px -> "
        f"{tokenizer.grid[0]}x{tokenizer.grid[1]} codes, codebook {tokenizer.codebook_size}, {size_mm(size_mb)} MB).  ",
        f"Training data: frontal images of `progemu synth --patients 200 --image-size 128` (seed 0). Evaluation: all "
        f"{result['images']} readable frontal images of a second world (`--seed 1 --patients {args.eval_patients}`): unseen patients.",
        "",
        "| metric | tokenizer | reference: 16x16 bilinear thumbnail | ratio |",
        "| --- | --- | --- | --- |",
        f"| PSNR (dB) | {result['psnr']:.2f} | {reference['psnr']:.2f} | {result['psnr'] / reference['psnr']:.2f} |",
        f"| SSIM | {result['ssim']:.4f} | {reference['ssim']:.4f} | {result['ssim'] / reference['ssim']:.2f} |",
        f"| codebook usage (held-out) | {result['codebook_usage']:.1%} ({result['codes_used']} codes, perplexity {result['perplexity']:.0f}) | | |",
        f"| encode->decode images/s | {result['images_per_s']:.1f} | | |",
        f"| encode images/s | {encode_ips:.1f} | | |",
        f"| training images/s (crops {summary.get('crop_size')} px) | {fmt(summary.get('train_images_per_s'))} "
        f"({summary.get('steps')} steps) | | |",
        "",
        "Small findings: pleural effusion measured by `progemu.synth.truth.measure_finding` (costophrenic region minus "
        "chest wall), change from a patient's study to the next, in the originals and in their reconstructions "
        f"(correlation of the changes {fmt(correlation, 3)}):",
        "",
        "| effusion grade, prior -> follow-up | n (sides) | change, original (mean +- sd) | change, reconstruction (mean +- sd) |",
        "| --- | --- | --- | --- |",
    ]
    for kind, values in effusion.items():
        if values["n"]:
            lines.append(f"| {kind} | {values['n']} | {values['change_original']:.4f} +- {values['sd_original']:.4f} | "
                         f"{values['change_reconstruction']:.4f} +- {values['sd_reconstruction']:.4f} |")
    if separation:
        lines += ["", f"New small effusion (0->1) vs none (0->0), AUROC of the measured change: original "
                      f"{separation['original']:.3f}, reconstruction {separation['reconstruction']:.3f}."]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def fmt(value, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def size_mm(size_mb: float) -> str:
    return f"{size_mb:.1f}"


if __name__ == "__main__":
    sys.exit(main())
