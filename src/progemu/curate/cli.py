"""``progemu curate``: build ICG-CXR (official layout) from MIMIC-CXR-JPG and/or CheXpert Plus."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from progemu.curate.config import CurateConfig
from progemu.utils.checks import ArgumentParser, HelpFormatter, float_range, int_range, positive_int

__all__ = ["main", "build_parser", "config_from_args"]


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="progemu curate", formatter_class=HelpFormatter,
        description="Build the ICG-CXR dataset (official release layout) from MIMIC-CXR-JPG, CheXpert Plus or the "
                    "synthetic world. Resumable: run the same command again after an interruption.")
    parser.add_argument("--mimic", type=Path, help="MIMIC-CXR-JPG root (metadata/chexpert/split CSVs, files/, reports)")
    parser.add_argument("--chexpert-plus", type=Path, help="CheXpert Plus root (df_chexpert_plus_*.csv, PNG/ or DICOM/)")
    parser.add_argument("--out", type=Path, required=True, help="output dataset directory")
    parser.add_argument("--annotator", choices=("rules", "llm"), default="rules",
                        help="rules: offline, deterministic; llm: an OpenAI-compatible endpoint (default rules)")
    parser.add_argument("--image-size", type=int_range(32, 4096), default=512,
                        help="side of the square output PNGs, 32..4096 (default 512)")
    parser.add_argument("--resize-mode", choices=("stretch", "crop", "pad"), default="stretch",
                        help="how a non-square image becomes square (default stretch, as the official scripts)")
    parser.add_argument("--max-days", type=float_range(0, min_open=True), default=100.0,
                        help="longest prior-to-follow-up interval in days, > 0 (default 100)")
    parser.add_argument("--min-confidence", type=int, default=3, choices=range(1, 6), metavar="1..5",
                        help="drop pairs annotated with a lower confidence (default 3)")
    parser.add_argument("--split", choices=("hash", "official"), default="hash",
                        help="hash: deterministic patient hash (default); official: the source dataset's split")
    parser.add_argument("--test-fraction", type=float_range(0, 1, max_open=True), default=0.1,
                        help="share of patients in test with --split hash, in [0, 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the patient hash split")
    parser.add_argument("--workers", type=positive_int, default=1, help="processes for image registration (default 1)")
    parser.add_argument("--limit-patients", type=positive_int, default=None,
                        help="use only the first N patients, N >= 1 (trial runs; default: all)")
    llm = parser.add_argument_group("LLM annotator (--annotator llm)")
    llm.add_argument("--llm-base-url", help="OpenAI-compatible endpoint, e.g. an Azure OpenAI resource or a local vLLM")
    llm.add_argument("--llm-model", help="model (Azure: deployment) name")
    llm.add_argument("--llm-api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    llm.add_argument("--llm-api-version", help="Azure OpenAI api-version (selects the Azure client)")
    llm.add_argument("--llm-concurrency", type=positive_int, default=4, help="requests in flight at once (default 4)")
    llm.add_argument("--allow-public-llm-with-dua", action="store_true",
                     help="acknowledge that sending credentialed reports to this public API host is allowed by your "
                          "data use agreement (PhysioNet forbids e.g. api.openai.com for MIMIC)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--debug-sleep", type=float, default=0.0, help=argparse.SUPPRESS)
    return parser


def _is_synthetic(path: Path | None) -> bool:
    """The synthetic world writes ``synth_config.json`` beside its dataset folders."""
    return path is not None and (Path(path).parent / "synth_config.json").is_file()


def config_from_args(args: argparse.Namespace) -> CurateConfig:
    sources = [p for p in (args.mimic, args.chexpert_plus) if p is not None]
    synthetic = bool(sources) and all(_is_synthetic(p) for p in sources)
    return CurateConfig(
        mimic=None if args.mimic is None else str(Path(args.mimic).resolve()),
        chexpert_plus=None if args.chexpert_plus is None else str(Path(args.chexpert_plus).resolve()),
        out=str(Path(args.out).resolve()), annotator=args.annotator, image_size=args.image_size,
        resize_mode=args.resize_mode, max_days=args.max_days, min_confidence=args.min_confidence, split=args.split,
        test_fraction=args.test_fraction, seed=args.seed, workers=args.workers, llm_base_url=args.llm_base_url,
        llm_model=args.llm_model, llm_api_key_env=args.llm_api_key_env, llm_api_version=args.llm_api_version,
        llm_concurrency=args.llm_concurrency, allow_public_llm_with_dua=args.allow_public_llm_with_dua,
        credentialed=not synthetic, limit_patients=args.limit_patients,
    )


def main(argv: list[str] | None = None) -> int:
    from progemu.utils.extras import prepare_command

    prepare_command("curate", sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.mimic is None and args.chexpert_plus is None:
        parser.error("give --mimic DIR and/or --chexpert-plus DIR")
    config = config_from_args(args)
    from progemu.curate.pipeline import run_curation
    from progemu.utils.checks import check_in_dir, check_out_dir
    from progemu.utils.lock import OutputLockedError, output_lock

    try:
        for flag, path in (("--mimic", args.mimic), ("--chexpert-plus", args.chexpert_plus)):
            if path is not None:
                check_in_dir(path, flag, "dataset folder")
        check_out_dir(args.out)
        with output_lock(args.out, "progemu curate"):
            result = run_curation(config, progress=not args.quiet, debug_sleep_s=args.debug_sleep)
    except (FileNotFoundError, ValueError) as error:
        print(f"progemu curate: error: {error}", file=sys.stderr)
        return 2
    except OutputLockedError as error:
        print(f"progemu curate: error: {error}", file=sys.stderr)
        return 1
    del result
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
