"""``progemu synth``: write a synthetic longitudinal chest X-ray world.

    progemu synth --out DIR [--patients N] [--image-size PX] [--seed S] [--workers W] [--anatomy phantom|real]

Writes DIR/mimic-cxr-jpg/, DIR/chexpert-plus/, DIR/ground_truth.jsonl and
DIR/synth_config.json (see :mod:`progemu.synth.writer`). Deterministic under
``--seed`` for any ``--workers``; a killed run resumes when started again with
the same arguments. ``DIR/synth_done.json`` (the config, written atomically after
everything else) marks a finished world: a re-run with the same arguments then
returns at once, and ``progemu demo`` skips the stage only when it exists.
"""
from __future__ import annotations

import argparse
import sys
import time

__all__ = ["main", "build_parser", "DONE_NAME"]

#: written last, after every file of the world: the world is complete
DONE_NAME = "synth_done.json"


def build_parser() -> argparse.ArgumentParser:
    from progemu.utils.checks import ArgumentParser, HelpFormatter, int_range, positive_int

    parser = ArgumentParser(prog="progemu synth", description=__doc__.split("\n\n")[0],
                            formatter_class=HelpFormatter)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--patients", type=positive_int, default=50, help="number of patients (default 50)")
    parser.add_argument("--image-size", type=int_range(64, 2048), default=256, help="image side in pixels (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--workers", type=positive_int, default=1, help="worker processes (output does not depend on it; default 1)")
    parser.add_argument("--anatomy", choices=("phantom", "real"), default="phantom",
                        help="phantom: drawn anatomy (default); real: shipped real radiographs with inserted findings")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    from progemu.utils.extras import prepare_command

    prepare_command("synth", sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.patients < 1:
        print("progemu synth: --patients must be at least 1", file=sys.stderr)
        return 2
    if not 64 <= args.image_size <= 2048:
        print("progemu synth: --image-size must be between 64 and 2048 px", file=sys.stderr)
        return 2
    from .writer import RealSynthConfig, SynthConfig, write_world

    config_class = RealSynthConfig if args.anatomy == "real" else SynthConfig
    config = config_class(patients=args.patients, image_size=args.image_size, seed=args.seed)
    from pathlib import Path

    from progemu.utils.checks import UsageError, check_out_dir
    from progemu.utils.config import config_to_dict
    from progemu.utils.identity import read_identity, write_identity
    from progemu.utils.lock import OutputLockedError, output_lock

    start = time.perf_counter()
    try:
        check_out_dir(args.out)
        with output_lock(args.out, "progemu synth"):
            done = read_identity(Path(args.out) / DONE_NAME)
            if done is not None and {k: v for k, v in done.items() if not k.startswith("_")} == config_to_dict(config):
                print(f"progemu synth: {Path(args.out).resolve()} already holds this world (complete); nothing to do")
                return 0
            (Path(args.out) / DONE_NAME).unlink(missing_ok=True)
            out = write_world(config, args.out, workers=max(1, args.workers), progress=not args.quiet)
            write_identity(out / DONE_NAME, config_to_dict(config))  # last: vouches for everything above
    except (ValueError, UsageError) as error:
        print(f"progemu synth: {error}", file=sys.stderr)
        return 2
    except OutputLockedError as error:
        print(f"progemu synth: {error}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - start
    print(f"progemu synth: wrote {args.patients} patients at {args.image_size} px to {out.resolve()} in {seconds:.1f} s")
    return 0
