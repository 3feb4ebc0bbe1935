"""``progemu evaluate`` and ``progemu evaluate train-evaluators``.

    progemu evaluate --model CKPT --data DATA [--split test] --out DIR
        [--cascade-image DIR --cascade-text DIR] [--evaluators DIR | --xrv-weights F --biomedclip DIR]
        [--generations DIR] [--max-pairs N] [--samples 1] [--seed S] [--ground-truth FILE] [--no-meteor]
        [--text-backend coco|nltk|both] [--pairs-list FILE]
        [--baseline NAME=DIR ...] [--generations NAME=DIR ...]   (diffusion baselines, external methods' outputs)
    progemu evaluate train-evaluators --data DATA --out DIR [--epochs-classifier N] [--epochs-clip N]
        [--image-size 128] [--clip-image-size 64] [--max-pairs N] [--seed S]
"""
from __future__ import annotations

import argparse
import logging
import sys

from progemu.utils.checks import (ArgumentParser, HelpFormatter, UsageError, float_range, int_range, nonneg_int,
                                   positive_int)
from progemu.utils.lock import OutputLockedError

__all__ = ["main"]


def _multiple_of_32(text: str) -> int:
    value = int_range(32, 4096)(text)
    if value % 32:
        raise argparse.ArgumentTypeError(f"must be a multiple of 32, got {value}")
    return value


def _evaluate_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="progemu evaluate", description="Table-1 metrics, figures and an HTML "
                            "report on a split (sub-command: train-evaluators)", formatter_class=HelpFormatter)
    parser.add_argument("--model", help="ProgEmu checkpoint directory (not needed when --generations holds them all)")
    parser.add_argument("--data", required=True, help="curated ICG-CXR dataset directory")
    parser.add_argument("--split", default="test", help="split of --data to evaluate: train | validate | test")
    parser.add_argument("--out", required=True, help="output directory (metrics.json, table.md, report.html, figures/)")
    parser.add_argument("--cascade-image", help="ProgEmu² image-only checkpoint (with --cascade-text)")
    parser.add_argument("--cascade-text", help="ProgEmu² text-only checkpoint (with --cascade-image)")
    parser.add_argument("--evaluators", help="synthetic-world evaluators directory (from train-evaluators)")
    parser.add_argument("--xrv-weights", help="torchxrayvision densenet121-res224-all weights file (real data)")
    parser.add_argument("--biomedclip", help="BiomedCLIP directory (open_clip_config.json + weights, or HF cache)")
    parser.add_argument("--generations", action="append", default=[], metavar="DIR | NAME=DIR",
                        help="DIR: the generation cache (default OUT/generations); NAME=DIR (repeatable): a row scoring "
                             "an external method's outputs, DIR/<pair id with / as __>.png (+ optional .txt "
                             "interpretation), see progemu.baseline.rows")
    parser.add_argument("--baseline", action="append", default=[], metavar="NAME=DIR",
                        help="a row for a trained diffusion baseline (progemu baseline train --out DIR); repeatable")
    parser.add_argument("--ground-truth", help="ground_truth.jsonl of the synthetic world (default: via curate_config.json)")
    parser.add_argument("--max-pairs", type=positive_int, help="evaluate only the first N pairs of the split (default: all)")
    parser.add_argument("--samples", type=positive_int, default=1, help="counterfactuals drawn per pair (metrics use the first)")
    parser.add_argument("--seed", type=int, default=0, help="seed of pair i is SEED + i")
    parser.add_argument("--batch-size", type=positive_int, default=4, help="generation batch size")
    parser.add_argument("--cfg", type=float_range(0), help="classifier-free guidance scale passed to generation "
                        "(1 = off; default: the model's saved setting)")
    parser.add_argument("--gen-option", action="append", default=[], metavar="KEY=VALUE",
                        help="extra generate_batch keyword (JSON value), e.g. max_text_tokens=64; repeatable")
    parser.add_argument("--figure-pairs", type=nonneg_int, default=4,
                        help="pairs shown in the report's figures, with attention maps (0 = no figures)")
    parser.add_argument("--no-meteor", action="store_true", help="skip METEOR (no Java)")
    parser.add_argument("--recipe", choices=("model", "official"), default="model",
                        help="official = generate with the released inference settings (as `progemu generate --recipe "
                             "official`) and score text with --text-backend nltk unless given; see docs/paper.md")
    parser.add_argument("--text-backend", choices=("coco", "nltk", "both"), default=None,
                        help="BLEU-3 / METEOR / ROUGE-L implementation: coco = pycocoevalcap (METEOR 1.5, Java); nltk = "
                             "NLTK METEOR + rouge_score ROUGE-L, as Hugging Face evaluate (likely the paper's); both = "
                             "coco plus METEOR-nltk / ROUGE-L-hf columns (default coco; nltk with --recipe official)")
    parser.add_argument("--pairs-list", help="JSON list of pair JSON paths to evaluate, like the official --meta_path "
                        "(replaces --split; the test list of the paper is not released)")
    parser.add_argument("--device", help="device of the evaluators (default: cuda when available, else cpu)")
    parser.add_argument("--overwrite", action="store_true",
                        help="discard cached generations made by another model or with other settings (instead of refusing)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--verbose", action="store_true", help="also show third-party progress bars (weight loading)")
    return parser


def _train_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="progemu evaluate train-evaluators", formatter_class=HelpFormatter,
                            description="train the synthetic-world classifier and CLIP on the training split")
    parser.add_argument("--data", required=True, help="curated ICG-CXR dataset made from the synthetic world")
    parser.add_argument("--out", required=True, help="output directory (evaluators.json + weights)")
    parser.add_argument("--image-size", type=int_range(16, 4096), default=128, help="classifier input size (px)")
    parser.add_argument("--clip-image-size", type=_multiple_of_32, default=64, help="CLIP input size (px, multiple of 32)")
    parser.add_argument("--epochs-classifier", type=positive_int, help="classifier epochs (default: the built-in schedule)")
    parser.add_argument("--epochs-clip", type=positive_int, help="CLIP epochs (default: the built-in schedule)")
    parser.add_argument("--max-pairs", type=positive_int, help="use only the first N training pairs (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
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
    from progemu.utils.checks import check_in_dir, check_out_dir
    from progemu.utils.lock import output_lock

    check_in_dir(args.data, "--data", "dataset folder")
    check_out_dir(args.out)
    with output_lock(args.out, "progemu evaluate train-evaluators"):
        out = train_evaluators(args.data, args.out, config, progress=not args.quiet)
    print(f"evaluators saved to {out}")
    return 0


def _named_rows(args) -> tuple[str | None, dict[str, str], dict[str, str]]:
    """(generation cache, --baseline rows, external --generations NAME=DIR rows) from the flags."""
    from pathlib import Path

    from progemu.baseline.rows import parse_named_dirs

    from .runner import ROW_ORDER

    cache, named = None, []
    for value in args.generations:
        name, sep, _ = value.partition("=")
        if sep and name and "/" not in name and not Path(value).exists():
            named.append(value)
        elif cache is None:
            cache = value
        else:
            raise UsageError(f"--generations {value}: only one generation cache DIR; an external method's outputs "
                             "are given as NAME=DIR")
    baselines, external = parse_named_dirs(args.baseline, "--baseline"), parse_named_dirs(named, "--generations")
    for name in [*baselines, *external]:
        if name in ROW_ORDER or (name in baselines and name in external):
            raise UsageError(f"row name {name!r} is taken (reserved: {', '.join(ROW_ORDER)}); choose another NAME")
    for name, directory in {**baselines, **external}.items():
        if not Path(directory).is_dir():
            flag = "--baseline" if name in baselines else "--generations"
            raise UsageError(f"{flag} {name}={directory}: folder not found")
    return cache, baselines, external


def _generate_kwargs(args) -> dict:
    import json

    kwargs = {} if args.cfg is None else {"cfg_scale": args.cfg}
    if args.recipe == "official":
        from progemu.generate.cli import OFFICIAL_SAMPLING

        # the official guidance covers image and text tokens alike
        kwargs = {**OFFICIAL_SAMPLING, **({"cfg_scale": args.cfg, "cfg_text_scale": args.cfg} if args.cfg is not None else {})}
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
    from progemu.utils.extras import prepare_command

    prepare_command("evaluate", argv)
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
        from progemu.utils.checks import check_device, check_in_dir, check_out_dir
        from progemu.utils.lock import output_lock

        from .runner import EvaluateConfig, evaluate

        check_in_dir(args.data, "--data", "dataset folder")
        for flag in ("model", "cascade_image", "cascade_text", "evaluators"):
            if getattr(args, flag):
                check_in_dir(getattr(args, flag), "--" + flag.replace("_", "-"))
        check_device(args.device)
        check_out_dir(args.out)
        cache, baselines, external = _named_rows(args)
        config = EvaluateConfig(data=args.data, out=args.out, model=args.model, split=args.split,
                                cascade_image=args.cascade_image, cascade_text=args.cascade_text,
                                evaluators=args.evaluators, xrv_weights=args.xrv_weights, biomedclip=args.biomedclip,
                                generations=cache, baselines=baselines, external=external, ground_truth=args.ground_truth,
                                max_pairs=args.max_pairs, samples=args.samples, seed=args.seed,
                                batch_size=args.batch_size, meteor=not args.no_meteor, figure_pairs=args.figure_pairs,
                                text_backend=args.text_backend or ("nltk" if args.recipe == "official" else "coco"),
                                pairs_list=args.pairs_list,
                                generate_kwargs=_generate_kwargs(args), device=args.device, overwrite=args.overwrite)
        with output_lock(args.out, "progemu evaluate"):
            metrics = evaluate(config, progress=not args.quiet)
    except UsageError as error:
        print(f"progemu evaluate: {error}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, OutputLockedError) as error:
        print(f"progemu evaluate: {error}", file=sys.stderr)
        return 1
    from .report import markdown_table

    print(markdown_table(metrics), end="")
    print(f"report: {args.out}/report.html")
    return 0
