"""``progemu convert --model BAAI_DIR [--vision-tokenizer BAAI_VQ_DIR] [--tokenizer BAAI_TOKENIZER_DIR] --out DIR``.

Examples::

    # the official ProgEmu checkpoint (no tokenizer files inside: take them from Emu3-Gen)
    progemu convert --model progemu-ckpt --tokenizer Emu3-Gen --vision-tokenizer Emu3-VisionTokenizer --out progemu-official
    # BAAI's Emu3-Gen, as the start of `progemu train --init`
    progemu convert --model Emu3-Gen --vision-tokenizer Emu3-VisionTokenizer --out emu3-gen --sampling emu3-gen

The flags are the fields of :class:`progemu.convert.config.ConvertConfig`. Weights keep their
dtype and are streamed (memory stays near one read buffer); the output records where it came
from (``progemu.json`` ``"converted_from"``: files, sizes, SHA-256, progemu version).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import typing

from progemu.utils.checks import ArgumentParser, UsageError

from .config import FIELD_HELP, SAMPLING_PRESETS, ConvertConfig

__all__ = ["build_parser", "main", "config_from_args"]

log = logging.getLogger("progemu.convert")
_REQUIRED = ("model", "out")


def build_parser() -> argparse.ArgumentParser:
    """One flag per :class:`ConvertConfig` field (``image_size`` -> ``--image-size``; bools are switches)."""
    from progemu.utils.checks import HelpFormatter, float_range, int_range

    parser = ArgumentParser(prog="progemu convert", formatter_class=HelpFormatter,
                            description="Turn the released ProgEmu / BAAI Emu3 weights (BAAI's format) into a progemu "
                                        "checkpoint that generate, evaluate, serve and train --init load as it is.")
    hints = typing.get_type_hints(ConvertConfig)
    for field in dataclasses.fields(ConvertConfig):
        flag = "--" + field.name.replace("_", "-")
        kwargs: dict = {"help": FIELD_HELP[field.name]}
        if hints[field.name] is bool:
            if field.default:
                parser.add_argument("--no-" + field.name.replace("_", "-"), dest=field.name, action="store_false",
                                    help=f"do not {FIELD_HELP[field.name][0].lower()}{FIELD_HELP[field.name][1:]} "
                                         "(by default it is done)")
            else:
                parser.add_argument(flag, action="store_true", **kwargs)
            continue
        if field.name == "sampling":
            kwargs["choices"] = sorted(SAMPLING_PRESETS)
        elif hints[field.name] is int:
            kwargs["type"] = int_range(8)
        elif hints[field.name] is float:
            kwargs["type"] = float_range(0, min_open=True)
        parser.add_argument(flag, required=field.name in _REQUIRED, default=None if field.name in _REQUIRED else field.default,
                            **kwargs)
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    return parser


def config_from_args(args: argparse.Namespace) -> ConvertConfig:
    return ConvertConfig(**{field.name: getattr(args, field.name) for field in dataclasses.fields(ConvertConfig)}).validate()


def main(argv: list[str] | None = None) -> int:
    from progemu.utils.extras import prepare_command

    prepare_command("convert", sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from progemu.utils.checks import check_in_dir, check_out_dir
    from progemu.utils.lock import OutputLockedError, output_lock

    from .converter import convert
    from .safetensors_io import WeightFormatError

    try:
        config = config_from_args(args)
        for flag, value in (("--model", config.model), ("--vision-tokenizer", config.vision_tokenizer),
                            ("--tokenizer", config.tokenizer)):
            if value is not None:
                check_in_dir(value, flag)
        check_out_dir(config.out)
        with output_lock(config.out, "progemu convert"):
            result = convert(config)
    except (UsageError, WeightFormatError) as error:
        print(f"progemu convert: error: {error}", file=sys.stderr)
        return 2
    except OutputLockedError as error:
        print(f"progemu convert: error: {error}", file=sys.stderr)
        return 1
    if result.up_to_date:
        print(f"progemu convert: {result.out} is already converted from these files; nothing to do")
    else:
        print(f"progemu convert: wrote {result.out} ({result.bytes_copied / 1e9:.2f} GB of weights in {result.seconds:.1f} s; "
              f"streaming pass {result.copy_seconds:.1f} s = {result.bytes_copied / 1e6 / max(result.copy_seconds, 1e-9):.0f} MB/s); "
              f"use it with `progemu generate --model {result.out} ...`")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
