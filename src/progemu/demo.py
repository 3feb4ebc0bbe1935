"""``progemu demo``: the main job on the embedded synthetic world, end to end.

    synth -> curate (rules annotator) -> [tokenizer train -> tokenize -> train (joint + ProgEmu² halves)
    -> baseline train (InstructPix2Pix, PIE) -> train-evaluators] -> evaluate -> DIR/eval/report.html

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
    # real = Hannover radiographs with inserted findings (progemu synth --anatomy real); phantom = the drawn world
    anatomy: str = "real"
    image_size: int = 128
    seed: int = 0
    workers: int = 2
    retrain: bool = False
    cascade: bool = False  # --cascade also trains / evaluates the two halves of ProgEmu² (2x the training time)
    tokenizer_steps: int | None = None  # None: the preset's default
    tokenizer_consistency: float = 1.0  # code-stability term of tokenizer training (progemu tokenizer train)
    preset: str = "tiny"  # model shape of ProgEmu (and the ProgEmu² halves)
    # 1000 steps x 16 pairs (~21 epochs of the 748 training pairs) of a 1500-step cosine, image codes weighted
    # 0.25 (BENCHMARKS.md "keeping the patient"). On the phantom world the cosine's low-lr tail memorised
    # training images (FID 9.7 -> 53), hence stopping at two thirds of it; weight 1 (the paper's plain mean)
    # lets the irreducible image-code loss drown the interpretation's
    train_steps: int = 1000
    train_schedule_steps: int | None = 1500
    train_batch_size: int = 16
    visual_loss_weight: float = 0.25
    # follow-up cell (i, j) at a fixed offset from prior cell (i, j), and prior -> prior "no change" pairs mixed
    # in: what lets a small model keep the patient (BENCHMARKS.md "keeping the patient")
    positions: str = "aligned"
    identity_pairs: float = 0.15
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
    # logit bonus for the prior's code at the same cell (progemu generate --anchor); 2 keeps the patient and shows
    # changes better than 0 or 4 on the demo test split (BENCHMARKS.md "keeping the patient")
    anchor: float = 2.0
    # the paper's diffusion baselines as rows of the demo table (progemu baseline): InstructPix2Pix and PIE (its
    # region mask from the world's ground truth); trained with --train-batch-size for baseline_steps steps
    # (None = --train-steps: the same number of steps and pairs per step as ProgEmu)
    baselines: bool = True
    baseline_steps: int | None = None


#: which demo stage each setting feeds (a changed setting invalidates that stage and every later one);
#: ``workers`` only changes speed. A setting not listed here invalidates everything.
STAGE_OF_SETTING = {
    "patients": "synth", "image_size": "synth", "seed": "synth", "anatomy": "synth",
    "tokenizer_consistency": "weights", "positions": "weights", "identity_pairs": "weights", "anchor": "evaluate",
    "retrain": "weights", "cascade": "weights", "tokenizer_steps": "weights", "preset": "weights",
    "train_steps": "weights", "train_schedule_steps": "weights", "train_batch_size": "weights",
    "visual_loss_weight": "weights", "train_device": "weights", "cascade_steps": "weights",
    "max_eval_pairs": "evaluate", "cfg": "evaluate", "temperature": "evaluate", "top_k": "evaluate",
    "text_temperature": "evaluate",
    "baselines": "weights", "baseline_steps": "weights",
}
_SPEED_ONLY = ("workers",)
#: stage -> the folders under OUT it writes, in pipeline order
_STAGE_OUTPUTS = {"synth": ("world",), "curate": ("icg-cxr",), "weights": ("weights",), "evaluate": ("eval",)}
IDENTITY_NAME = "demo_identity.json"


def demo_identity(config: DemoConfig) -> dict:
    """What a demo folder's results depend on: its settings and, without --retrain, the committed weights."""
    from progemu.utils.identity import checkpoint_identity

    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in _SPEED_ONLY}
    assets = None
    if not config.retrain and _assets_present(ASSETS_DIR):
        assets = {"model": checkpoint_identity(ASSETS_DIR / "model"),
                  "evaluators": checkpoint_identity(ASSETS_DIR / "evaluators")}
        assets.update({f"baseline {m}": checkpoint_identity(d) for m, d in _baseline_dirs(ASSETS_DIR, config).items()})
    return {"settings": settings, "assets": assets}


def check_demo_folder(out: Path, config: DemoConfig, overwrite: bool = False) -> list[str]:
    """Refuse (or, with ``overwrite``, clear the affected stages of) a demo folder made with other settings.

    Returns the folders removed. A folder of an older progemu with only ``demo_config.json`` is
    compared on its settings.
    """
    from progemu.utils.identity import StaleOutputError, differences, read_identity

    current = demo_identity(config)
    saved = read_identity(out / IDENTITY_NAME)
    if saved is None:
        old_config = read_identity(out / "demo_config.json")
        if old_config is None:
            return []
        saved = {"settings": {k: v for k, v in old_config.items() if not k.startswith("_") and k not in _SPEED_ONLY},
                 "assets": current["assets"]}
    names = {f"settings.{k}": "--" + k.replace("_", "-") for k in current["settings"]}
    names.update({"assets.model": "the committed demo model", "assets.evaluators": "the committed demo evaluators"})
    found = differences(saved, current, names=names)
    if not found:
        return []
    if not overwrite:
        raise StaleOutputError(f"--out {out}: holds a demo made with other settings: {', '.join(found[:4])}"
                               f"{' and more' if len(found) > 4 else ''}; re-run with the same options, add --overwrite "
                               "to redo the affected stages, or choose a new --out")
    order = list(_STAGE_OUTPUTS)
    changed_keys = [k for k in current["settings"] if saved.get("settings", {}).get(k) != current["settings"][k]]
    stages = [STAGE_OF_SETTING.get(k, "synth") for k in changed_keys]
    if saved.get("assets") != current["assets"]:
        stages.append("evaluate")
    first = min(order.index(stage) for stage in stages) if stages else 0
    removed = []
    for stage in order[first:]:
        for folder in _STAGE_OUTPUTS[stage]:
            if (out / folder).exists():
                shutil.rmtree(out / folder)
                removed.append(folder)
    for name in ("demo_log.json",):
        (out / name).unlink(missing_ok=True)
    print(f"[demo] --overwrite: settings changed ({', '.join(found[:4])}); removed {', '.join(removed) or 'nothing'} "
          "and running those stages again", flush=True)
    return removed


def _stage(name: str, done_marker: Path, argv_main, argv: list[str], log: list) -> None:
    """Run one stage's ``main(argv)`` unless its output marker already exists (each stage writes its
    marker last, after the outputs it vouches for)."""
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


#: the diffusion baselines of the demo table, trained under WEIGHTS/baselines/<method>
BASELINE_METHODS = ("instructpix2pix", "pie")


def _baseline_dirs(weights: Path, config: DemoConfig) -> dict[str, Path]:
    """method -> its finished baseline folder under ``weights/baselines`` (missing ones left out)."""
    if not config.baselines:
        return {}
    folders = {m: weights / "baselines" / m for m in BASELINE_METHODS}
    return {m: d for m, d in folders.items() if (d / "baseline.json").exists()}


def _train_baselines(weights: Path, data: Path, config: DemoConfig, log: list) -> None:
    """``progemu baseline train`` for each method, resumed when a killed demo left checkpoints."""
    steps = config.baseline_steps or config.train_steps
    for method in BASELINE_METHODS:
        target = weights / "baselines" / method
        argv = ["baseline", "train", "--method", method, "--data", str(data), "--out", str(target), "--max-steps",
                str(steps), "--batch-size", str(config.train_batch_size), "--device", config.train_device,
                "--seed", str(config.seed), "--image-size", str(config.image_size)]
        if (target / "checkpoints").is_dir():
            argv.append("--resume")
        _stage(f"train {method}", target / "baseline.json", _command_main("baseline"), argv, log)


def sampling_settings(config: DemoConfig) -> dict:
    """The sampling settings the demo evaluates with (saved with the demo weights as their defaults)."""
    return {"cfg_scale": config.cfg, "temperature": config.temperature, "top_k": config.top_k,
            "text_temperature": config.text_temperature, "anchor": config.anchor}


def run_demo(out: str | Path, config: DemoConfig, save_assets: Path | None = None, verbose: bool = False,
             overwrite: bool = False) -> Path:
    from progemu.generate.model_defaults import write_sampling_defaults
    from progemu.utils.atomic import atomic_write_json
    from progemu.utils.config import save_config

    from progemu.utils.identity import write_identity

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    check_demo_folder(out, config, overwrite=overwrite)
    save_config(config, out / "demo_config.json")
    write_identity(out / IDENTITY_NAME, demo_identity(config))
    log: list[dict] = []
    world, data = out / "world", out / "icg-cxr"
    size = str(config.image_size)

    from progemu.synth.cli import DONE_NAME as synth_done

    _stage("synth", world / synth_done, _command_main("synth"),
           ["synth", "--out", str(world), "--anatomy", config.anatomy, "--patients", str(config.patients), "--image-size", size,
            "--seed", str(config.seed), "--workers", str(config.workers)], log)
    _stage("curate", data / "dataset_card.md", _command_main("curate"),
           ["curate", "--mimic", str(world / "mimic-cxr-jpg"), "--chexpert-plus", str(world / "chexpert-plus"),
            "--out", str(data), "--annotator", "rules", "--image-size", size, "--workers", str(config.workers),
            "--seed", str(config.seed)], log)

    if config.retrain:
        weights = out / "weights"
        tok = weights / "tokenizer"
        argv = ["tokenizer", "train", "--data", str(data), "--out", str(tok), "--preset", "demo", "--seed", str(config.seed),
                "--consistency-weight", str(config.tokenizer_consistency)]
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
                    "--seed", str(config.seed), "--positions", config.positions, "--identity-pairs", str(config.identity_pairs)]
            if name == "model" and config.train_schedule_steps and config.train_schedule_steps > steps:
                argv += ["--schedule-steps", str(config.train_schedule_steps)]
            if (weights / name / "checkpoints").is_dir():
                argv.append("--resume")  # a killed demo continues training where it stopped
            _stage(f"train {name}", weights / name / "progemu.json", _command_main("train"), argv, log)
        for name in models:  # the settings the evaluation below uses travel with the weights
            write_sampling_defaults(weights / name, sampling_settings(config),
                                    note="progemu demo: the settings of the demo evaluation (demo_config.json)")
        if config.baselines:
            _train_baselines(weights, data, config, log)
        _stage("train-evaluators", weights / "evaluators" / "evaluators.json", _command_main("evaluate"),
               ["evaluate", "train-evaluators", "--data", str(data), "--out", str(weights / "evaluators"),
                "--image-size", size, "--seed", str(config.seed)], log)
    else:
        weights = ASSETS_DIR
        if not _assets_present(weights):
            raise SystemExit(f"[demo] the committed demo weights are missing under {weights}; "
                             "run `progemu demo --retrain --out DIR` to build them from scratch")
        print(f"[demo] using the committed demo weights in {weights} (see MANIFEST.json; --retrain rebuilds them)")
        print(f"[demo] demo model: {weights / 'model'} (`progemu generate --model demo ...` and "
              "`progemu serve --model demo` use it with its saved sampling settings)", flush=True)

    argv = ["evaluate", "--model", str(weights / "model"), "--data", str(data), "--split", "test",
            "--out", str(out / "eval"), "--evaluators", str(weights / "evaluators"), "--seed", str(config.seed),
            "--cfg", str(config.cfg), "--gen-option", f"temperature={config.temperature}",
            "--gen-option", f"top_k={config.top_k}", "--gen-option", f"text_temperature={config.text_temperature}",
            "--gen-option", f"anchor={config.anchor}"]
    if config.cascade and (weights / "cascade-image" / "progemu.json").exists():
        argv += ["--cascade-image", str(weights / "cascade-image"), "--cascade-text", str(weights / "cascade-text")]
    for method, directory in _baseline_dirs(weights, config).items():
        argv += ["--baseline", f"{method}={directory}"]
    if config.max_eval_pairs:
        argv += ["--max-pairs", str(config.max_eval_pairs)]
    if verbose:
        argv.append("--verbose")
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
    if config.baselines:  # fp16 copies: a few MB each (loaded back as float32)
        from progemu.baseline.config import SampleConfig
        from progemu.baseline.model import copy_model
        from progemu.utils.config import config_to_dict

        for method, directory in _baseline_dirs(weights, config).items():  # with the sampling settings evaluated
            copy_model(directory, target / "baselines" / method, fp16=True, sampling=config_to_dict(SampleConfig()))
    for name in names:
        source = weights / name
        if target.joinpath(name).exists():
            shutil.rmtree(target / name)
        shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("checkpoints", "checkpoint*", "*.pt", "runs", "tb", ".image_tokenizer", ".progemu.lock"))
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
    from progemu.utils.checks import ArgumentParser, HelpFormatter, float_range, int_range, nonneg_int, positive_int

    parser = ArgumentParser(prog="progemu demo", description=__doc__.split("\n\n")[0],
                            formatter_class=HelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (world/, icg-cxr/, eval/report.html)")
    parser.add_argument("--retrain", action="store_true", help="train tokenizer, model(s) and evaluators from scratch")
    parser.add_argument("--save-assets", type=Path, help="with --retrain: copy the new weights here (e.g. src/progemu/assets/demo)")
    parser.add_argument("--patients", type=positive_int, default=defaults.patients, help="patients in the synthetic world")
    parser.add_argument("--anatomy", choices=("real", "phantom"), default=defaults.anatomy,
                        help="real = real radiographs with inserted findings; phantom = the drawn world (progemu synth --anatomy)")
    parser.add_argument("--image-size", type=int_range(64, 2048), default=defaults.image_size,
                        help="side of the world's and the dataset's images (px)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of every stage")
    parser.add_argument("--workers", type=positive_int, default=defaults.workers,
                        help="worker processes of synth and curate (results do not depend on it)")
    parser.add_argument("--cascade", action="store_true", help="with --retrain: also train the ProgEmu² halves and add their row")
    parser.add_argument("--no-cascade", action="store_true", help=argparse.SUPPRESS)  # the default; kept for old commands
    parser.add_argument("--tokenizer-steps", type=positive_int, default=None,
                        help="with --retrain: tokenizer training steps (default: the demo preset's)")
    parser.add_argument("--preset", default=defaults.preset, help="model shape (progemu train --preset)")
    parser.add_argument("--train-steps", type=positive_int, default=defaults.train_steps,
                        help="with --retrain: optimiser steps of ProgEmu")
    parser.add_argument("--train-schedule-steps", type=nonneg_int, default=defaults.train_schedule_steps,
                        help="length of ProgEmu's cosine schedule; training stops at --train-steps (0 = the run's length)")
    parser.add_argument("--cascade-steps", type=positive_int, default=defaults.cascade_steps,
                        help="with --retrain --cascade: optimiser steps of each ProgEmu² half")
    parser.add_argument("--train-batch-size", type=positive_int, default=defaults.train_batch_size,
                        help="with --retrain: pairs per optimiser step")
    parser.add_argument("--visual-loss-weight", type=float_range(0), default=defaults.visual_loss_weight,
                        help="weight of image-code labels in the training loss (progemu train --visual-loss-weight)")
    parser.add_argument("--train-device", default=defaults.train_device, choices=("auto", "cpu", "cuda"),
                        help="device of the model training stages (auto = CUDA when available)")
    parser.add_argument("--max-eval-pairs", type=positive_int, default=None,
                        help="evaluate only the first N test pairs (default: all)")
    parser.add_argument("--no-baselines", action="store_true",
                        help="leave out the diffusion baseline rows (InstructPix2Pix, PIE with oracle masks)")
    parser.add_argument("--baseline-steps", type=positive_int, default=None,
                        help="with --retrain: optimiser steps of each diffusion baseline (default: --train-steps)")
    parser.add_argument("--anchor", type=float_range(0), default=defaults.anchor,
                        help="logit bonus for the prior's code at the same cell in the evaluation (0 = off)")
    parser.add_argument("--positions", choices=("sequential", "aligned"), default=defaults.positions,
                        help="with --retrain: ProgEmu's positions (progemu train --positions)")
    parser.add_argument("--identity-pairs", type=float_range(0, 1, max_open=True), default=defaults.identity_pairs,
                        help="with --retrain: share of prior -> prior 'no change' examples (progemu train --identity-pairs)")
    parser.add_argument("--tokenizer-consistency", type=float_range(0), default=defaults.tokenizer_consistency,
                        help="with --retrain: code-stability weight of tokenizer training (0 = off)")
    parser.add_argument("--cfg", type=float_range(0), default=defaults.cfg,
                        help="classifier-free guidance on image tokens in the evaluation (1 = off)")
    parser.add_argument("--temperature", type=float_range(0), default=defaults.temperature,
                        help="sampling temperature of image tokens (0 = greedy)")
    parser.add_argument("--top-k", type=nonneg_int, default=defaults.top_k, help="top-k of image tokens (0 = off)")
    parser.add_argument("--text-temperature", type=float_range(0), default=defaults.text_temperature,
                        help="sampling temperature of the interpretation (0 = greedy)")
    parser.add_argument("--verbose", action="store_true", help="also show third-party progress bars (weight loading)")
    parser.add_argument("--overwrite", action="store_true",
                        help="OUT holds a demo made with other options: redo the stages those options affect "
                             "(default: refuse and name the options that differ)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from progemu.utils.extras import prepare_command

    prepare_command("demo", sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    config = DemoConfig(patients=args.patients, image_size=args.image_size, seed=args.seed, workers=args.workers,
                        retrain=args.retrain, cascade=args.cascade and not args.no_cascade, tokenizer_steps=args.tokenizer_steps,
                        preset=args.preset, train_steps=args.train_steps, train_batch_size=args.train_batch_size,
                        visual_loss_weight=args.visual_loss_weight, train_device=args.train_device,
                        train_schedule_steps=args.train_schedule_steps or None,
                        cascade_steps=args.cascade_steps, max_eval_pairs=args.max_eval_pairs, cfg=args.cfg,
                        temperature=args.temperature, top_k=args.top_k, text_temperature=args.text_temperature,
                        anchor=args.anchor, positions=args.positions, identity_pairs=args.identity_pairs,
                        baselines=not args.no_baselines, baseline_steps=args.baseline_steps,
                        tokenizer_consistency=args.tokenizer_consistency, anatomy=args.anatomy)
    from progemu.utils.checks import UsageError, check_out_dir
    from progemu.utils.lock import OutputLockedError, output_lock

    try:
        check_out_dir(args.out)
        with output_lock(args.out, "progemu demo"):
            run_demo(args.out, config, save_assets=args.save_assets, verbose=args.verbose, overwrite=args.overwrite)
    except UsageError as error:
        print(f"progemu demo: {error}", file=sys.stderr)
        return 2
    except OutputLockedError as error:
        print(f"progemu demo: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
