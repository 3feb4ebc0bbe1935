"""``progemu tokenizer train|eval``: train a domain image tokenizer, or score one.

    progemu tokenizer train --data DIR --out DIR [--preset demo] [--max-steps N] [--resume] [--batch-size B]
    progemu tokenizer eval  --tokenizer DIR --data DIR [--split test] [--out FILE]

``--data`` is a curated ICG-CXR dataset or any folder of PNG/JPG/DICOM radiographs.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from progemu.utils.checks import ArgumentParser, UsageError, check_device, check_in_dir, check_out_dir, check_out_file
from progemu.utils.lock import OutputLockedError, output_lock


def build_parser() -> argparse.ArgumentParser:
    from progemu.tokenizer.presets import PRESETS

    from progemu.utils.checks import HelpFormatter, float_range, int_range, nonneg_int, positive_int

    parser = ArgumentParser(prog="progemu tokenizer", description=__doc__.split("\n")[0],
                            formatter_class=HelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a domain tokenizer (Emu3 VQ-VAE architecture)",
                                formatter_class=HelpFormatter)
    train.add_argument("--data", required=True, help="curated ICG-CXR dataset or a folder of images")
    train.add_argument("--out", required=True, help="output directory (tokenizer + checkpoint + log)")
    train.add_argument("--preset", default="demo", choices=sorted(p for p in PRESETS if p != "emu3"),
                       help="architecture and training defaults")
    train.add_argument("--max-steps", type=positive_int, default=None, help="optimiser steps (default: the preset's; "
                       "with --resume: the run's)")
    train.add_argument("--batch-size", type=positive_int, default=None, help="images per step (default: the preset's)")
    train.add_argument("--crop-size", type=nonneg_int, default=None,
                       help="random crop size in px, a multiple of the tokenizer's downsampling factor "
                            "(0 = whole images; default: the preset's)")
    train.add_argument("--lr", type=float_range(0, min_open=True), default=None, help="learning rate (default: the preset's)")
    train.add_argument("--codebook-size", type=int_range(2), default=None,
                       help="override the preset's codebook size (>= 2; default: the preset's)")
    train.add_argument("--seed", type=int, default=None, help="random seed (default: the preset's)")
    train.add_argument("--consistency-weight", type=float_range(0), default=None,
                       help="weight of the code-stability term (perturbed views pulled onto the clean codes; 0 = off)")
    train.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    train.add_argument("--device", default=None, help="cpu or cuda (default: the preset's, cpu for demo)")
    train.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    train.add_argument("--no-eval", action="store_true", help="skip the final evaluation on held-out images")
    train.add_argument("--quiet", action="store_true", help="no progress bar")

    evaluate = commands.add_parser("eval", help="PSNR, SSIM, codebook usage and speed on a split",
                                   formatter_class=HelpFormatter)
    evaluate.add_argument("--tokenizer", required=True, help="tokenizer directory")
    evaluate.add_argument("--data", required=True, help="curated ICG-CXR dataset or a folder of images")
    evaluate.add_argument("--split", default="test", help="train | validate | test | all (folders: a hashed hold-out)")
    evaluate.add_argument("--out", default=None, help="also write the JSON to this file (default: stdout only)")
    evaluate.add_argument("--batch-size", type=positive_int, default=16, help="images per encode/decode batch")
    evaluate.add_argument("--max-images", type=positive_int, default=None, help="score at most N images (default: all)")
    evaluate.add_argument("--examples", default=None, help="folder for a few original|reconstruction|difference PNGs")
    evaluate.add_argument("--device", default="cpu", help="cpu or cuda")
    evaluate.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    return parser


def _train(args) -> int:
    from progemu.tokenizer.evaluate import EvalConfig, evaluate_tokenizer
    from progemu.tokenizer.train import load_train_config, train_config_for, train_tokenizer
    from progemu.tokenizer.vqvae import ImageTokenizer
    from progemu.utils.atomic import atomic_write_json

    max_steps = args.max_steps
    saved_config = Path(args.out) / "train_config.json"
    if args.resume and max_steps is None and saved_config.exists():
        max_steps = load_train_config(saved_config).max_steps  # resuming keeps the run's length unless told otherwise
    config = train_config_for(args.preset, max_steps=max_steps, batch_size=args.batch_size, crop_size=args.crop_size,
                              lr=args.lr, seed=args.seed, threads=args.threads, device=args.device,
                              consistency_weight=args.consistency_weight)
    if args.codebook_size:
        config.tokenizer.codebook_size = args.codebook_size
    factor = config.tokenizer.downsample
    if config.crop_size and (config.crop_size % factor or config.crop_size < 2 * factor):
        raise UsageError(f"--crop-size {config.crop_size}: must be 0 (whole images) or a multiple of {factor} "
                         f"(the {args.preset} tokenizer's downsampling factor) of at least {2 * factor}")
    check_in_dir(args.data, "--data", "dataset or image folder")
    check_device(config.device)
    check_out_dir(args.out)
    with output_lock(args.out, "progemu tokenizer train"):
        summary = train_tokenizer(args.data, args.out, config, resume=args.resume, progress=not args.quiet)
    if not args.no_eval:
        tokenizer = ImageTokenizer.from_pretrained(args.out)
        split = "test"
        try:
            summary["eval"] = evaluate_tokenizer(tokenizer, args.data, EvalConfig(split=split, holdout=config.holdout))
        except FileNotFoundError:
            summary["eval"] = evaluate_tokenizer(tokenizer, args.data, EvalConfig(split="train", max_images=64))
        atomic_write_json(f"{args.out}/eval.json", summary["eval"])
    print(json.dumps(summary, default=str))
    return 0


def _eval(args) -> int:
    import torch

    from progemu.tokenizer.evaluate import EvalConfig, evaluate_tokenizer
    from progemu.tokenizer.vqvae import ImageTokenizer
    from progemu.utils.atomic import atomic_write_json

    if args.threads:
        torch.set_num_threads(args.threads)
    # every check that can fail does so before the (slow) evaluation, so its result is never thrown away
    check_in_dir(args.data, "--data", "dataset or image folder")
    check_device(args.device)
    if args.out:
        check_out_file(args.out)
    if args.examples:
        check_out_dir(args.examples, "--examples")
    tokenizer = ImageTokenizer.from_pretrained(args.tokenizer, device=args.device)
    result = evaluate_tokenizer(tokenizer, args.data, EvalConfig(split=args.split, batch_size=args.batch_size,
                                                                  max_images=args.max_images),
                                save_examples=args.examples)
    print(json.dumps(result), flush=True)  # first: a late write error must not lose the numbers
    if args.out:
        atomic_write_json(args.out, result)
    return 0


def main(argv: list[str] | None = None) -> int:
    from progemu.utils.extras import prepare_command

    prepare_command("tokenizer", sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        return _train(args) if args.command == "train" else _eval(args)
    except UsageError as error:
        print(f"progemu tokenizer {args.command}: {error}", file=sys.stderr)
        return 2
    except (FileNotFoundError, FileExistsError, ValueError, OutputLockedError) as error:
        print(f"progemu tokenizer {args.command}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
