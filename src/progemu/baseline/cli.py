"""``progemu baseline``: the paper's diffusion baselines, trained and sampled in progemu's harness.

    progemu baseline train --method instructpix2pix --data ICG --out DIR [--max-steps N] [--device cpu] [--resume]
    progemu baseline train --method pie --data ICG --out DIR
    progemu baseline generate --model DIR --prior IMG --prompt TEXT --out DIR [--mask PNG]
    progemu baseline generate --model DIR --data ICG --split test --out DIR [--oracle-masks | --masks DIR]

``train`` flags are derived from :class:`progemu.baseline.config.BaselineConfig` (and the sampling
flags of ``generate`` from :class:`~progemu.baseline.config.SampleConfig`), one ``--field-name`` per
field. ``generate`` on a split writes the folder format that ``progemu evaluate --generations
NAME=DIR`` scores (``DIR/<pair folder>.png``, see :mod:`progemu.baseline.rows`); ``progemu evaluate
--baseline NAME=DIR`` generates and scores in one go.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from pathlib import Path

from progemu.utils.checks import ArgumentParser, HelpFormatter, nonneg_int, positive_int

__all__ = ["main", "add_config_arguments", "config_from_namespace", "train_parser", "generate_parser"]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_arguments(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """One flag per field of the dataclass ``cls`` (help, choices and ``required`` from its metadata);
    ``bool`` fields become ``--name`` (default off) or ``--no-name`` (default on)."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        meta, hint = field.metadata, hints[field.name]
        kwargs: dict = {"help": meta.get("help", ""), "dest": field.name}
        if hint is bool:
            flag = _flag(field.name) if not field.default else "--no-" + field.name.replace("_", "-")
            parser.add_argument(flag, action="store_false" if field.default else "store_true", default=field.default,
                                **kwargs)
            continue
        kind = hint
        if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None -> X
            kind = next(a for a in typing.get_args(hint) if a is not type(None))
        if typing.get_origin(kind) is tuple or kind is tuple:
            kwargs.update(nargs="+", type=typing.get_args(kind)[0] if typing.get_args(kind) else int)
        else:
            kwargs["type"] = kind
        if "choices" in meta:
            kwargs["choices"] = meta["choices"]
        if meta.get("required"):
            kwargs["required"] = True
        else:
            kwargs["default"] = field.default
        parser.add_argument(_flag(field.name), **kwargs)


def config_from_namespace(cls, args: argparse.Namespace, **fixed):
    """The dataclass ``cls`` from the parsed flags (tuples restored), with ``fixed`` values on top."""
    values = {}
    for field in dataclasses.fields(cls):
        if hasattr(args, field.name):
            value = getattr(args, field.name)
            values[field.name] = tuple(value) if isinstance(value, list) else value
    values.update(fixed)
    return cls(**values)


def train_parser() -> argparse.ArgumentParser:
    from .config import BaselineConfig

    parser = ArgumentParser(prog="progemu baseline train", formatter_class=HelpFormatter,
                            description="train a diffusion baseline (InstructPix2Pix or PIE) on ICG-CXR pairs")
    add_config_arguments(parser, BaselineConfig)
    return parser


def generate_parser() -> argparse.ArgumentParser:
    from .config import SampleConfig

    parser = ArgumentParser(prog="progemu baseline generate", formatter_class=HelpFormatter,
                            description="counterfactuals of a trained baseline: one prior, or every pair of a split")
    parser.add_argument("--model", required=True, help="trained baseline folder (progemu baseline train --out)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--prior", help="one prior radiograph (PNG / JPG / DICOM)")
    parser.add_argument("--prompt", help="the hypothesis, with --prior")
    parser.add_argument("--mask", help="with --prior: region mask PNG (white = edit; pie)")
    parser.add_argument("--data", help="curated dataset: generate for every pair of --split")
    parser.add_argument("--split", default="test", help="split of --data")
    parser.add_argument("--max-pairs", type=positive_int, help="only the first N pairs of the split")
    parser.add_argument("--masks", help="with --data (pie): folder of region masks, <pair folder>.png")
    parser.add_argument("--oracle-masks", action="store_true",
                        help="with --data (pie): the region of the changed findings from the synthetic world's ground truth")
    parser.add_argument("--ground-truth", help="ground_truth.jsonl (default: found through DATA/curate_config.json)")
    parser.add_argument("--samples", type=positive_int, default=1, help="counterfactuals per request")
    parser.add_argument("--seed", type=int, default=0, help="seed of request i is SEED + i")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="requests per batch")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    group = parser.add_argument_group("sampling (default: the settings saved with the model)")
    hints = typing.get_type_hints(SampleConfig)
    for field in dataclasses.fields(SampleConfig):
        group.add_argument(_flag(field.name), dest=field.name, default=None,
                           type=float if hints[field.name] is float else nonneg_int, help=field.metadata["help"])
    return parser


def _train(argv: list[str]) -> int:
    from progemu.utils.checks import check_device, check_in_dir, check_out_dir
    from progemu.utils.lock import output_lock

    from .config import BaselineConfig
    from .train import train_baseline

    args = train_parser().parse_args(argv)
    config = config_from_namespace(BaselineConfig, args)
    config.validate()
    check_in_dir(config.data, "--data", "dataset folder")
    check_device(config.device)
    check_out_dir(config.out)
    with output_lock(config.out, "progemu baseline train"):
        train_baseline(config)
    return 0


def _sampling_overrides(args: argparse.Namespace) -> dict:
    from .config import SampleConfig

    return {f.name: getattr(args, f.name) for f in dataclasses.fields(SampleConfig) if getattr(args, f.name) is not None}


def _generate(argv: list[str]) -> int:
    import numpy as np

    from progemu.utils.atomic import atomic_save_png, atomic_write_json
    from progemu.utils.checks import UsageError, check_out_dir

    from .sample import BaselinePipeline

    args = generate_parser().parse_args(argv)
    if bool(args.prior) == bool(args.data):
        raise UsageError("give either --prior IMG --prompt TEXT or --data DIR (every pair of --split)")
    if args.prior and not args.prompt:
        raise UsageError("--prior needs --prompt TEXT")
    out = check_out_dir(args.out)
    overrides = _sampling_overrides(args)
    pipeline = BaselinePipeline.from_pretrained(args.model, device=args.device)
    if args.prior:
        from progemu.data.images import read_image

        prior = read_image(args.prior)
        masks = [read_image(args.mask)] if args.mask else None
        result = pipeline.generate_batch([prior], [args.prompt], samples=args.samples, seed=[args.seed], masks=masks,
                                         **overrides)[0]
        for k, image in enumerate(result.counterfactuals):
            atomic_save_png(out / f"counterfactual_{k}.png", image)
        atomic_write_json(out / "result.json", {"model": str(args.model), "settings": result.settings,
                                                "seconds": result.timings.get("seconds")})
        print(f"counterfactual written to {out / 'counterfactual_0.png'}")
        return 0
    _generate_split(args, pipeline, overrides, out)
    return 0


def _generate_split(args, pipeline, overrides: dict, out: Path) -> None:
    from tqdm.auto import tqdm

    from progemu.data.icgcxr import load_pairs
    from progemu.data.images import read_image
    from progemu.evaluate.generations import pair_folder
    from progemu.utils.atomic import atomic_save_png, atomic_write_json
    from progemu.utils.checks import UsageError

    pairs = load_pairs(args.data, split=args.split)[: args.max_pairs]
    if not pairs:
        raise UsageError(f"--data {args.data}: split {args.split!r} has no pairs")
    ground_truth = None
    if args.oracle_masks:
        from progemu.evaluate.fidelity import find_ground_truth

        ground_truth = find_ground_truth(args.data, args.ground_truth)
        if ground_truth is None:
            raise UsageError(f"--oracle-masks: no ground_truth.jsonl found for {args.data}; pass --ground-truth FILE")
    for start in tqdm(range(0, len(pairs), args.batch_size), desc="generate"):
        batch = [p for p in pairs[start:start + args.batch_size] if not (out / f"{pair_folder(p.pair_id)}.png").exists()]
        if not batch:
            continue
        priors = [read_image(p.prior_image) for p in batch]
        masks = None
        if ground_truth is not None:
            from .rows import oracle_masks

            masks = oracle_masks(batch, ground_truth, priors[0].shape[0])
        elif args.masks:
            masks = [read_image(Path(args.masks) / f"{pair_folder(p.pair_id)}.png") for p in batch]
        seeds = [args.seed + pairs.index(p) for p in batch]
        results = pipeline.generate_batch(priors, [p.prompt for p in batch], seed=seeds, masks=masks, **overrides)
        for pair, result in zip(batch, results):
            atomic_save_png(out / f"{pair_folder(pair.pair_id)}.png", result.counterfactuals[0])
    atomic_write_json(out / "generate_config.json", {"model": str(args.model), "data": str(args.data), "split": args.split,
                                                     "seed": args.seed, "sampling": overrides,
                                                     "masks": "ground truth" if ground_truth else (args.masks or None)})
    print(f"{len(pairs)} counterfactuals in {out} (score them: progemu evaluate --generations NAME={out} ...)")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"train": _train, "generate": _generate}
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    from progemu.utils.extras import prepare_command

    prepare_command("baseline", argv)
    if argv[0] not in commands:
        print(f"progemu baseline: unknown sub-command {argv[0]!r}; choose one of {sorted(commands)}", file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
