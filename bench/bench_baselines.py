"""Benchmark: ProgEmu next to the paper's diffusion baselines (InstructPix2Pix, PIE) on the demo world.

Every row is scored in ONE ``progemu evaluate`` run: the same test pairs, the same evaluators, the same
reference rows. Reports all metrics, each model's training budget (steps x pairs, CPU seconds from its
``log.jsonl``) and sampling time per counterfactual (from the generation caches), and writes
``bench/results/baselines.md``.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_baselines.py --data demo-out/icg-cxr \\
        --evaluators src/progemu/assets/demo/evaluators --model src/progemu/assets/demo/model \\
        --baseline instructpix2pix=W/instructpix2pix --baseline pie=W/pie --work runs/bench-baselines \\
        [--reuse-generations demo-out/eval/generations] [--out bench/results/baselines.md]

The baselines are made with ``progemu baseline train --method M --data DATA --out W/M --max-steps 1000
--batch-size 16 --threads 1`` (``progemu demo --retrain`` runs the same commands).
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import time
from pathlib import Path

#: the demo's sampling settings of ProgEmu (progemu demo, DemoConfig)
PROGEMU_FLAGS = ["--cfg", "3.0", "--gen-option", "temperature=0.7", "--gen-option", "top_k=64",
                 "--gen-option", "text_temperature=0.0", "--gen-option", "anchor=2.0"]


def training_budget(directory: Path) -> dict:
    """Steps, pairs per step, CPU and wall seconds of a baseline's training (its log.jsonl, summed over resumes)."""
    from safetensors import safe_open

    from progemu.utils.atomic import read_jsonl

    records = read_jsonl(directory / "log.jsonl")
    config = json.loads((directory / "baseline_config.json").read_text(encoding="utf-8"))
    if not records:  # a copied model (the committed demo weights): its baseline.json and the folder's MANIFEST
        train = json.loads((directory / "baseline.json").read_text(encoding="utf-8")).get("train", {})
        manifest = directory.parent / "MANIFEST.json"
        made = json.loads(manifest.read_text(encoding="utf-8"))["baselines"].get(config["method"], {}) \
            if manifest.is_file() else {}
        records = [{"step": train.get("step"), "cpu_s": train.get("cpu_s"), "loss": made.get("final_loss", float("nan"))}]
    parameters = 0
    for part in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        with safe_open(str(directory / part), "pt") as handle:
            for key in handle.keys():
                parameters += math.prod(handle.get_slice(key).get_shape())
    last = records[-1] if records else {}
    return {"steps": last.get("step"), "batch": config["batch_size"], "cpu_s": last.get("cpu_s"),
            "final_loss": last.get("loss"), "parameters_m": round(parameters / 1e6, 2), "method": config["method"],
            "space": f"{config['space']} x{config['unshuffle']}" if config["space"] == "unshuffle" else config["space"]}


def sampling_seconds(generations: Path) -> dict[str, float]:
    """Mean seconds per counterfactual of each cached row (the ``seconds`` of its index lines)."""
    from progemu.utils.atomic import read_jsonl

    out = {}
    for index in sorted(generations.glob("*/index.jsonl")):
        seconds = [r["seconds"] for r in read_jsonl(index) if r.get("seconds") is not None]
        if seconds:
            out[index.parent.name] = sum(seconds) / len(seconds)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--evaluators", required=True)
    parser.add_argument("--model", required=True, help="ProgEmu checkpoint (the demo model)")
    parser.add_argument("--baseline", action="append", default=[], metavar="NAME=DIR")
    parser.add_argument("--work", required=True, help="scratch folder (the evaluation goes to WORK/eval)")
    parser.add_argument("--reuse-generations", help="a generation cache (e.g. the demo's eval/generations) whose rows "
                        "are copied in instead of generating again; a row made otherwise is refused by its key")
    parser.add_argument("--progemu-budget", default="1000 steps x 16 pairs of a 1500-step cosine on the 2-core CPU VM "
                        "(src/progemu/assets/demo/MANIFEST.json): 2.9 CPU s per step measured with one thread, i.e. "
                        "~2,900 CPU s, plus the image tokenizer's training",
                        help="how ProgEmu's training budget is stated (it was measured elsewhere)")
    parser.add_argument("--out", default="bench/results/baselines.md")
    args = parser.parse_args()

    from progemu.evaluate.cli import main as evaluate_main
    from progemu.evaluate.report import markdown_table

    work = Path(args.work)
    evaluation = work / "eval"
    if args.reuse_generations:  # rows made by the same models with the same settings (keys are checked on reuse)
        for row in Path(args.reuse_generations).iterdir():
            if (row / "index.jsonl").is_file() and not (evaluation / "generations" / row.name).exists():
                shutil.copytree(row, evaluation / "generations" / row.name)
    argv = ["--model", args.model, "--data", args.data, "--split", "test", "--out", str(evaluation),
            "--evaluators", args.evaluators, "--seed", "0", *PROGEMU_FLAGS, "--quiet"]
    for value in args.baseline:
        argv += ["--baseline", value]
    started = time.perf_counter()
    assert evaluate_main(argv) == 0, "progemu evaluate failed"
    seconds = time.perf_counter() - started
    metrics = json.loads((evaluation / "metrics.json").read_text(encoding="utf-8"))
    timing = sampling_seconds(evaluation / "generations")
    budgets = {value.split("=", 1)[0]: training_budget(Path(value.split("=", 1)[1])) for value in args.baseline}

    lines = ["# The paper's baselines in the same harness: ProgEmu vs InstructPix2Pix and PIE (demo world)", "",
             f"Machine: {platform.machine()}, the shared 2-core development VM (other jobs running), no GPU, "
             "`OMP_NUM_THREADS=1`, torch 1 thread per training process.", "",
             "Command: `OMP_NUM_THREADS=1 .venv/bin/python bench/bench_baselines.py " + " ".join(
                 f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                 if v and k not in ("baseline", "progemu_budget")) + " " + " ".join(
                 f"--baseline {v}" for v in args.baseline) + f"` ({time.strftime('%Y-%m-%d')}); the evaluation "
             f"took {seconds:.0f} s wall.", "",
             f"## All rows, all metrics ({metrics['n_pairs']} test pairs, one `progemu evaluate` run)", "",
             markdown_table(metrics).split("\n\nText metrics")[0].rstrip(), "",
             "## Training budget and sampling time", "",
             "| method | trained | parameters | CPU s of training | sampling s / counterfactual (2 cores shared) |",
             "|---|---|---|---|---|",
             f"| ProgEmu (committed demo weights) | {args.progemu_budget} | 2.1 M | see 'trained' | "
             f"{timing.get('progemu', float('nan')):.2f} |"]
    rows = list(metrics["rows"])
    for name, budget in budgets.items():
        row = next((r for r in rows if r == name or r.startswith(name + " (")), name)
        lines.append(f"| {row} ({budget['method']}, {budget['space']}) | {budget['steps']} steps x {budget['batch']} pairs "
                     f"(final loss {budget['final_loss']:.4f}) | {budget['parameters_m']} M | {budget['cpu_s']:.0f} | "
                     f"{timing.get(row, float('nan')):.2f} |")
    lines += ["", "Raw numbers: `metrics.json` of the run (rows, changed_findings, fidelity_detail, per_finding)."]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    (work / "bench_baselines.json").write_text(json.dumps({"metrics_rows": metrics["rows"],
                                                           "changed": metrics["changed_findings"],
                                                           "budgets": budgets, "sampling_s": timing}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
