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


def build_parser() -> argparse.ArgumentParser:
    from progemu.tokenizer.presets import PRESETS

    parser = argparse.ArgumentParser(prog="progemu tokenizer", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a domain tokenizer (Emu3 VQ-VAE architecture)")
    train.add_argument("--data", required=True, help="curated ICG-CXR dataset or a folder of images")
    train.add_argument("--out", required=True, help="output directory (tokenizer + checkpoint + log)")
    train.add_argument("--preset", default="demo", choices=sorted(p for p in PRESETS if p != "emu3"))
    train.add_argument("--max-steps", type=int, default=None)
    train.add_argument("--batch-size", type=int, default=None)
    train.add_argument("--crop-size", type=int, default=None, help="random crop size in px (0 = whole images)")
    train.add_argument("--lr", type=float, default=None)
    train.add_argument("--codebook-size", type=int, default=None, help="override the preset's codebook size")
    train.add_argument("--seed", type=int, default=None)
    train.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    train.add_argument("--device", default=None, help="cpu (default) or cuda")
    train.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    train.add_argument("--no-eval", action="store_true", help="skip the final evaluation on held-out images")
    train.add_argument("--quiet", action="store_true", help="no progress bar")

    evaluate = commands.add_parser("eval", help="PSNR, SSIM, codebook usage and speed on a split")
    evaluate.add_argument("--tokenizer", required=True, help="tokenizer directory")
    evaluate.add_argument("--data", required=True, help="curated ICG-CXR dataset or a folder of images")
    evaluate.add_argument("--split", default="test", help="train | validate | test | all (folders: a hashed hold-out)")
    evaluate.add_argument("--out", default=None, help="write the JSON here as well")
    evaluate.add_argument("--batch-size", type=int, default=16)
    evaluate.add_argument("--max-images", type=int, default=None)
    evaluate.add_argument("--examples", default=None, help="folder for a few original|reconstruction|difference PNGs")
    evaluate.add_argument("--device", default="cpu")
    evaluate.add_argument("--threads", type=int, default=None)
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
                              lr=args.lr, seed=args.seed, threads=args.threads, device=args.device)
    if args.codebook_size:
        config.tokenizer.codebook_size = args.codebook_size
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
    tokenizer = ImageTokenizer.from_pretrained(args.tokenizer, device=args.device)
    result = evaluate_tokenizer(tokenizer, args.data, EvalConfig(split=args.split, batch_size=args.batch_size,
                                                                  max_images=args.max_images),
                                save_examples=args.examples)
    if args.out:
        atomic_write_json(args.out, result)
    print(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _train(args) if args.command == "train" else _eval(args)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"progemu tokenizer {args.command}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
