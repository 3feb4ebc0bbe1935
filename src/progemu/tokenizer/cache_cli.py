"""``progemu tokenize --data DIR --tokenizer TOK [--batch-size B] [--pairs-list FILE]``: cache the codes of every image.

Writes ``DIR/codes/<identity>/`` (see :mod:`progemu.tokenizer.cache`); re-running resumes and
encodes only images not cached yet. Prints one JSON line with the identity, counts and speed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def build_parser() -> argparse.ArgumentParser:
    from progemu.utils.checks import ArgumentParser, HelpFormatter, positive_int

    parser = ArgumentParser(prog="progemu tokenize", description=__doc__.split("\n")[0],
                            formatter_class=HelpFormatter)
    parser.add_argument("--data", required=True, help="curated ICG-CXR dataset (or a folder of images)")
    parser.add_argument("--tokenizer", required=True, help="tokenizer directory (progemu tokenizer train, or an Emu3 -hf model)")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="images encoded at once")
    parser.add_argument("--pairs-list", default=None,
                        help="JSON list of pair JSON paths (as the official --data_path): encode only their images")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    from progemu.utils.extras import prepare_command

    prepare_command("tokenize", sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    import torch

    from progemu.tokenizer.cache import ensure_codes
    from progemu.tokenizer.vqvae import ImageTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batch_size < 1:
        print("progemu tokenize: --batch-size must be >= 1", file=sys.stderr)
        return 2
    from progemu.tokenizer.cache import CODES_DIRNAME
    from progemu.utils.checks import UsageError, check_device, check_in_dir, check_out_dir
    from progemu.utils.lock import OutputLockedError, output_lock

    try:
        check_in_dir(args.data, "--data", "dataset or image folder")
        check_device(args.device)
        codes_dir = check_out_dir(f"{args.data}/{CODES_DIRNAME}", "--data")
        images = None
        if args.pairs_list is not None:
            from progemu.data.icgcxr import load_pairs

            pairs = load_pairs(args.data, pairs_list=args.pairs_list)
            images = [path for pair in pairs for path in (pair.prior_image, pair.followup_image)]
        tokenizer = ImageTokenizer.from_pretrained(args.tokenizer, device=args.device)
        start = time.perf_counter()
        with output_lock(codes_dir, "progemu tokenize", flag="--data"):
            cache = ensure_codes(args.data, tokenizer, images=images, batch_size=args.batch_size,
                                 progress=not args.quiet)
    except UsageError as error:
        print(f"progemu tokenize: {error}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, OutputLockedError) as error:
        print(f"progemu tokenize: {error}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - start
    print(json.dumps({"identity": cache.identity, "codes_dir": str(cache.root), "images": len(cache),
                      "encoded": cache.num_done, "unreadable": sorted(cache.failed), "grid": list(cache.grid), "seconds": round(seconds, 3)}))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
