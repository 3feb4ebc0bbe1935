"""``progemu synth``: write a synthetic longitudinal chest X-ray world.

    progemu synth --out DIR [--patients N] [--image-size PX] [--seed S] [--workers W]

Writes DIR/mimic-cxr-jpg/, DIR/chexpert-plus/, DIR/ground_truth.jsonl and
DIR/synth_config.json (see :mod:`progemu.synth.writer`). Deterministic under
``--seed`` for any ``--workers``; a killed run resumes when started again with
the same arguments.
"""
from __future__ import annotations

import argparse
import sys
import time

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="progemu synth", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--patients", type=int, default=50, help="number of patients (default 50)")
    parser.add_argument("--image-size", type=int, default=256, help="image side in pixels (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (output does not depend on it)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.patients < 1:
        print("progemu synth: --patients must be at least 1", file=sys.stderr)
        return 2
    if not 64 <= args.image_size <= 2048:
        print("progemu synth: --image-size must be between 64 and 2048 px", file=sys.stderr)
        return 2
    from .writer import SynthConfig, write_world

    config = SynthConfig(patients=args.patients, image_size=args.image_size, seed=args.seed)
    start = time.perf_counter()
    try:
        out = write_world(config, args.out, workers=max(1, args.workers), progress=not args.quiet)
    except ValueError as error:
        print(f"progemu synth: {error}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    print(f"progemu synth: wrote {args.patients} patients at {args.image_size} px to {out.resolve()} in {seconds:.1f} s")
    return 0
