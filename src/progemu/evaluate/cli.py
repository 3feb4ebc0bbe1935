"""``progemu evaluate`` and ``progemu evaluate train-evaluators``.

    progemu evaluate --model CKPT --data DATA [--split test] --out DIR
        [--cascade-image DIR --cascade-text DIR] [--evaluators DIR | --xrv-weights F --biomedclip DIR]
        [--generations DIR] [--max-pairs N] [--samples 1] [--seed S] [--ground-truth FILE] [--no-meteor]
    progemu evaluate train-evaluators --data DATA --out DIR [--epochs-classifier N] [--epochs-clip N]
        [--image-size 128] [--clip-image-size 64] [--max-pairs N] [--seed S]
"""
from __future__ import annotations

import argparse
import logging
import sys

__all__ = ["main"]


def _evaluate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="progemu evaluate", description="Table-1 metrics, figures and an HTML "
                                     "report on a split (sub-command: train-evaluators)")
    parser.add_argument("--model", help="ProgEmu checkpoint directory (not needed when --generations holds them all)")
    parser.add_argument("--data", required=True, help="curated ICG-CXR dataset directory")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", required=True, help="output directory (metrics.json, table.md, report.html, figures/)")
    parser.add_argument("--cascade-image", help="ProgEmu² image-only checkpoint (with --cascade-text)")
    parser.add_argument("--cascade-text", help="ProgEmu² text-only checkpoint (with --cascade-image)")
    parser.add_argument("--evaluators", help="synthetic-world evaluators directory (from train-evaluators)")
    parser.add_argument("--xrv-weights", help="torchxrayvision densenet121-res224-all weights file (real data)")
    parser.add_argument("--biomedclip", help="BiomedCLIP directory (open_clip_config.json + weights, or HF cache)")
    parser.add_argument("--generations", help="generation cache directory (default OUT/generations)")
    parser.add_argument("--ground-truth", help="ground_truth.jsonl of the synthetic world (default: via curate_config.json)")
    parser.add_argument("--max-pairs", type=int)
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=4, help="generation batch size")
    parser.add_argument("--cfg", type=float, help="classifier-free guidance scale passed to generation")
    parser.add_argument("--gen-option", action="append", default=[], metavar="KEY=VALUE",
                        help="extra generate_batch keyword (JSON value), e.g. max_text_tokens=64; repeatable")
    parser.add_argument("--figure-pairs", type=int, default=4)
    parser.add_argument("--no-meteor", action="store_true", help="skip METEOR (no Java)")
    parser.add_argument("--device", help="device of the evaluators (default: cuda when available, else cpu)")
    parser.add_argument("--quiet", action="store_true")
    return parser


def _train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="progemu evaluate train-evaluators",
                                     description="train the synthetic-world classifier and CLIP on the training split")
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--image-size", type=int, default=128, help="classifier input size (px)")
    parser.add_argument("--clip-image-size", type=int, default=64, help="CLIP input size (px, multiple of 32)")
    parser.add_argument("--epochs-classifier", type=int)
    parser.add_argument("--epochs-clip", type=int)
    parser.add_argument("--max-pairs", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true")
    return parser


def _train(argv: list[str]) -> int:
    from .evaluator_training import ClipConfig, TrainEvaluatorsConfig, train_evaluators
    from .evaluators import ClassifierConfig

    args = _train_parser().parse_args(argv)
    config = TrainEvaluatorsConfig(classifier=ClassifierConfig(image_size=args.image_size),
                                   clip=ClipConfig(image_size=args.clip_image_size), max_pairs=args.max_pairs,
                                   seed=args.seed)
    if args.epochs_classifier is not None:
        config.classifier_epochs = args.epochs_classifier
    if args.epochs_clip is not None:
        config.clip_epochs = args.epochs_clip
    out = train_evaluators(args.data, args.out, config, progress=not args.quiet)
    print(f"evaluators saved to {out}")
    return 0


def _generate_kwargs(args) -> dict:
    import json

    kwargs = {} if args.cfg is None else {"cfg_scale": args.cfg}
    for option in args.gen_option:
        key, sep, value = option.partition("=")
        if not sep or not key:
            raise ValueError(f"--gen-option {option!r}: expected KEY=VALUE")
        try:
            kwargs[key] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key] = value
    return kwargs


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # our progress at INFO; third-party loaders (open_clip logs every step at INFO on the root logger) at WARNING
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("progemu").setLevel(logging.INFO)
    try:
        if argv and argv[0] == "train-evaluators":
            return _train(argv[1:])
        args = _evaluate_parser().parse_args(argv)
        if bool(args.cascade_image) != bool(args.cascade_text):
            print("progemu evaluate: --cascade-image and --cascade-text go together", file=sys.stderr)
            return 2
        from .runner import EvaluateConfig, evaluate

        config = EvaluateConfig(data=args.data, out=args.out, model=args.model, split=args.split,
                                cascade_image=args.cascade_image, cascade_text=args.cascade_text,
                                evaluators=args.evaluators, xrv_weights=args.xrv_weights, biomedclip=args.biomedclip,
                                generations=args.generations, ground_truth=args.ground_truth,
                                max_pairs=args.max_pairs, samples=args.samples, seed=args.seed,
                                batch_size=args.batch_size, meteor=not args.no_meteor, figure_pairs=args.figure_pairs,
                                generate_kwargs=_generate_kwargs(args), device=args.device)
        metrics = evaluate(config, progress=not args.quiet)
    except (FileNotFoundError, ValueError) as error:
        print(f"progemu evaluate: {error}", file=sys.stderr)
        return 1
    from .report import markdown_table

    print(markdown_table(metrics), end="")
    print(f"report: {args.out}/report.html")
    return 0
