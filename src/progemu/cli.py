"""The ``progemu`` console script: thin glue that dispatches to each stage's ``main(argv)``.

Each stage owns its argument parser in ``progemu/<stage>/cli.py`` (so tests call
``main([...])`` directly, as open_clip does). Importing this module imports no
stage, so ``progemu --help`` is instant and a stage's heavy dependencies load
only when that stage runs.
"""
from __future__ import annotations

import errno
import importlib
import os
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
    "convert": ("progemu.convert.cli", "the released ProgEmu / BAAI Emu3 weights (BAAI's format) as a progemu checkpoint"),
    "baseline": ("progemu.baseline.cli", "the paper's diffusion baselines: `baseline train` InstructPix2Pix / PIE, `baseline generate`"),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: progemu COMMAND [options]   (progemu COMMAND --help for its options)", "", "commands:"]
    for name, (_, text) in COMMANDS.items():
        lines.append(f"  {name.ljust(width)}  {text}")
    return "\n".join(lines)


def _run(argv: list[str]) -> int:
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


def _run_and_flush(argv: list[str]) -> int:
    code = _run(argv)
    if sys.stdout is not None:
        sys.stdout.flush()  # a closed pipe shows up here, inside the handler, not at interpreter exit
    return code


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 600 else text[:597] + "..."


def _command_of(argv: list[str]) -> str:
    return f"progemu {argv[0]}" if argv and argv[0] in COMMANDS else "progemu"


def main(argv: list[str] | None = None) -> int:
    """Dispatch, and turn every expected failure into one line on stderr (no traceback).

    Exit status: 0 done, 2 usage (bad flag, path or input; refused re-run), 1 runtime failure,
    130 interrupted. ``--debug`` (anywhere on the line) or ``PROGEMU_DEBUG=1`` lets the
    traceback through instead.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("PROGEMU_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    name = _command_of(argv)
    if debug:
        return _run_and_flush(argv)
    from progemu.utils.checks import UsageError, describe_os_error

    hint = "(add --debug for the traceback)"
    try:
        return _run_and_flush(argv)
    except KeyboardInterrupt:
        print(f"\n{name}: interrupted; finished work is kept, run the same command again to continue", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader of our stdout went away (`progemu --help | head -3`): stop quietly
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 1
    except UsageError as error:
        print(f"{name}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"{name}: error: out of memory; use a smaller --batch-size (or a machine with more memory)", file=sys.stderr)
        return 1
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT):
            print(f"{name}: error: {describe_os_error(error)}", file=sys.stderr)
        else:
            print(f"{name}: error: {_one_line(error)} {hint}", file=sys.stderr)
        return 1
    except (ValueError, KeyError, RuntimeError, ImportError) as error:
        print(f"{name}: error: {_one_line(error)} {hint}", file=sys.stderr)
        return 1
    except Exception as error:  # noqa: BLE001 - last resort: still one line, the traceback behind --debug
        print(f"{name}: unexpected error ({type(error).__name__}): {_one_line(error)}; please report it with the "
              "output of the same command plus --debug", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
