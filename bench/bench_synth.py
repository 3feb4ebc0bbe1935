"""Benchmark `progemu synth`: 500 patients at 256 px with 2 workers (goal: <= 120 s on 2 cores).

Reference measured in the same run: the same generator with one worker on the
first fifth of the patients (per-patient throughput), so the ratio shows what the
worker pool buys on this machine at this moment (other users' load included).

    .venv/bin/python bench/bench_synth.py [--patients 500] [--image-size 256] [--workers 2] [--out bench/results/synth.md]
        [--anatomy phantom|real]   (real: goal <= 180 s; default report bench/results/synth_real.md)
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path


def _cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _run(patients: int, size: int, workers: int, root: Path, anatomy: str = "phantom") -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of this process and its workers, studies written)."""
    from progemu.synth.writer import RealSynthConfig, SynthConfig, write_world

    out = root / f"w{patients}-{workers}"
    config = (RealSynthConfig if anatomy == "real" else SynthConfig)(patients=patients, image_size=size, seed=0)
    start, cpu = time.perf_counter(), _cpu()
    write_world(config, out, workers=workers, progress=False)
    seconds, cpu = time.perf_counter() - start, _cpu() - cpu
    studies = sum(1 for _ in open(out / "ground_truth.jsonl"))
    shutil.rmtree(out)
    return seconds, cpu, studies


def contact_sheet(path: str, size: int = 128, patients: int = 4) -> Path:
    """Frontal series (up to 4 studies) + the first lateral of a few varied patients, captioned."""
    import numpy as np
    from PIL import Image, ImageDraw

    from progemu.synth.evolution import simulate_patient
    from progemu.synth.render import render_frontal
    from progemu.synth.render_lateral import render_lateral

    short = {"pleural_effusion": "eff", "cardiomegaly": "cardio", "edema": "edema", "consolidation": "cons",
             "pneumothorax": "ptx", "atelectasis": "atel", "lung_lesion": "lesion", "support_devices": "dev"}
    rows, seed = [], 0
    while len(rows) < patients:
        rng = np.random.default_rng(seed)
        seed += 1
        anatomy, studies = simulate_patient(rng)
        if len({k for s in studies for k in s.state.present_keys()}) < 2:
            continue
        tiles = []
        for study in studies[:4]:
            tile = Image.fromarray((render_frontal(anatomy, study.state, study.pose, size, rng) * 255).astype(np.uint8))
            words = []
            for key in study.state.present_keys():
                f = study.state[key]
                side = {"left": "L", "right": "R"}.get(f.side or "", "")
                words.append(f"{short[key.rsplit('_', 1)[0] if f.side else key]}{side}{f.severity}")
            draw = ImageDraw.Draw(tile)
            draw.text((2, 1), f"{study.pose.view} {' '.join(words) or 'normal'}", fill=255)
            tiles.append(tile)
        while len(tiles) < 4:
            tiles.append(Image.new("L", (size, size)))
        tiles.append(Image.fromarray((render_lateral(anatomy, studies[0].state, studies[0].lateral_pose, size, rng) * 255).astype(np.uint8)))
        row = Image.new("L", (5 * size, size))
        for i, tile in enumerate(tiles):
            row.paste(tile, (i * size, 0))
        rows.append(row)
    sheet = Image.new("L", (5 * size, patients * size))
    for i, row in enumerate(rows):
        sheet.paste(row, (0, i * size))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True)
    return Path(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=500)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--anatomy", choices=("phantom", "real"), default="phantom")
    parser.add_argument("--out", default=None, help="report (default bench/results/synth.md, real: synth_real.md)")
    parser.add_argument("--examples", default=None, help="also write a contact sheet PNG here")
    args = parser.parse_args(argv)
    if args.examples:
        print(f"contact sheet: {contact_sheet(args.examples)}")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    root = Path(tempfile.mkdtemp(prefix="bench_synth_"))
    try:
        ref_patients = max(1, args.patients // 5)
        ref_s, ref_cpu, ref_studies = _run(ref_patients, args.image_size, 1, root, args.anatomy)
        par_s, par_cpu, studies = _run(args.patients, args.image_size, args.workers, root, args.anatomy)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    ref_rate, rate = ref_patients / ref_s, args.patients / par_s
    command = f".venv/bin/python bench/bench_synth.py --patients {args.patients} --image-size {args.image_size} --workers {args.workers}"
    goal, anatomy_name = (120, "phantom anatomy") if args.anatomy == "phantom" else (180, "real anatomy")
    if args.anatomy != "phantom":
        command += f" --anatomy {args.anatomy}"
    out = args.out or ("bench/results/synth.md" if args.anatomy == "phantom" else "bench/results/synth_real.md")
    text = f"""# progemu synth benchmark ({args.anatomy} anatomy)

Command: `{command}`
Machine: {os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), shared; 1-min load average at the end: {load:.1f}.

| run | patients | studies | images | wall s | CPU s | patients/s (wall) | CPU ms / study |
| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
| reference: 1 worker, {args.image_size} px | {ref_patients} | {ref_studies} | {2 * ref_studies} | {ref_s:.1f} | {ref_cpu:.1f} | {ref_rate:.2f} | {1000 * ref_cpu / ref_studies:.0f} |
| {args.workers} workers, {args.image_size} px | {args.patients} | {studies} | {2 * studies} | {par_s:.1f} | {par_cpu:.1f} | {rate:.2f} | {1000 * par_cpu / studies:.0f} |

Ratio to the reference (wall throughput, same run): {rate / ref_rate:.2f}x.
CPU seconds / {args.workers} workers = {par_cpu / args.workers:.1f} s: the wall time on an otherwise idle {args.workers}-core machine
(the machine is shared with other engineers, so wall time includes their load).
Goal ({anatomy_name}): {args.patients} patients at {args.image_size} px in <= {goal} s on 2 cores: wall time {"met" if par_s <= goal else "NOT met"} ({par_s:.1f} s at load {load:.1f});
CPU-time estimate for idle cores {"met" if par_cpu / args.workers <= goal else "NOT met"} ({par_cpu / args.workers:.1f} s).
"""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
