"""The ``progemu`` console script: thin glue that dispatches to each stage's ``main(argv)``.

Each stage owns its argument parser in ``progemu/<stage>/cli.py`` (so tests call
``main([...])`` directly, as open_clip does). Importing this module imports no
stage, so ``progemu --help`` is instant and a stage's heavy dependencies load
only when that stage runs.
"""
from __future__ import annotations

import importlib
import sys

#: command -> (module with ``main(argv) -> int``, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("progemu.synth.cli", "write a synthetic longitudinal chest X-ray world (MIMIC-CXR-JPG + CheXpert Plus layouts)"),
    "curate": ("progemu.curate.cli", "build ICG-CXR (official layout) from MIMIC-CXR / CheXpert Plus / the synthetic world"),
    "tokenizer": ("progemu.tokenizer.cli", "image tokenizer: `tokenizer train` a domain VQ-VAE, `tokenizer eval` it"),
    "tokenize": ("progemu.tokenizer.cache_cli", "cache image codes for every image of a curated dataset"),
    "train": ("progemu.train.cli", "train ProgEmu (joint) or the two halves of the ProgEmu² cascade"),
    "generate": ("progemu.generate.cli", "counterfactual radiograph + interpretation (+ attention maps) for one prior and prompt"),
    "evaluate": ("progemu.evaluate.cli", "Table-1 metrics, figures and an HTML report on a split"),
    "demo": ("progemu.demo", "the main job: synthetic world -> curate -> tokenizer -> train -> evaluate -> report"),
    "serve": ("progemu.serve.cli", "web page for clinicians and teachers (Gradio)"),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: progemu COMMAND [options]   (progemu COMMAND --help for its options)", "", "commands:"]
    for name, (_, text) in COMMANDS.items():
        lines.append(f"  {name.ljust(width)}  {text}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    if argv[0] in {"-V", "--version"}:
        from progemu import __version__

        print(f"progemu {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"progemu: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, _ = COMMANDS[command]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and error.name.startswith("progemu"):
            print(f"progemu {command}: not built yet in this version of progemu (module {module_name} missing)", file=sys.stderr)
            return 3
        raise
    result = module.main(rest)
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
