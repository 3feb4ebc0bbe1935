"""Start-up checks of each command: optional packages, system tools and third-party chatter.

Every stage's ``main(argv)`` calls :func:`prepare_command` first, so a missing package is
reported in the first second, with the exact ``pip install`` line, instead of as a
``ModuleNotFoundError`` after minutes of work. The check looks modules up with
``importlib.util.find_spec`` (nothing is imported), and is skipped for ``--help``.

:data:`MODULES` maps each import name to its pip distribution and the progemu extra that
declares it (``None``: the base install); ``tests/test_packaging.py`` checks the table
against ``pyproject.toml``. :func:`quiet_third_party` silences transformers' per-load
"Loading weights" progress bars unless the command was given ``--verbose``.
"""
from __future__ import annotations

import importlib.util
import shutil
from typing import Sequence

__all__ = ["MODULES", "COMMAND_NEEDS", "MissingDependencies", "missing_for", "prepare_command", "quiet_third_party",
           "pip_requirement"]

#: import name -> (pip distribution, progemu extra declaring it; None = base install)
MODULES: dict[str, tuple[str, str | None]] = {
    "numpy": ("numpy", None),
    "PIL": ("pillow", None),
    "scipy": ("scipy", None),
    "SimpleITK": ("SimpleITK", None),
    "pydicom": ("pydicom", None),
    "torch": ("torch", None),
    "torchvision": ("torchvision", None),
    "transformers": ("transformers", None),
    "safetensors": ("safetensors", None),
    "torchxrayvision": ("torchxrayvision", None),
    "open_clip": ("open-clip-torch", None),
    "pycocoevalcap": ("pycocoevalcap", None),
    "torchmetrics": ("torchmetrics", None),
    "diffusers": ("diffusers", None),
    "nltk": ("nltk", None),
    "rouge_score": ("rouge-score", None),
    "wn": ("wn", None),
    "openai": ("openai", "curate"),
    "gradio": ("gradio", "serve"),
}

_EVALUATE = ("torch", "torchvision", "transformers", "safetensors", "scipy", "torchxrayvision", "open_clip",
             "pycocoevalcap", "torchmetrics")

#: command (as typed after ``progemu``) -> import names it needs
COMMAND_NEEDS: dict[str, tuple[str, ...]] = {
    "synth": ("numpy", "PIL", "scipy"),
    "curate": ("numpy", "PIL", "scipy", "SimpleITK", "pydicom"),
    "tokenizer": ("torch", "safetensors"),
    "tokenize": ("torch", "safetensors"),
    "train": ("torch", "transformers", "safetensors"),
    "generate": ("torch", "transformers", "safetensors", "pydicom"),
    "evaluate": _EVALUATE,
    "demo": ("numpy", "PIL", "scipy", "SimpleITK", "pydicom", *_EVALUATE, "diffusers"),
    "serve": ("torch", "transformers", "safetensors", "pydicom", "gradio"),
    "convert": ("torch", "transformers", "safetensors"),
    "baseline": ("torch", "transformers", "safetensors", "diffusers"),
}

#: commands that load transformers weights (their "Loading weights" bars are hidden unless --verbose)
_LOADS_WEIGHTS = {"generate", "evaluate", "demo", "serve"}


class MissingDependencies(SystemExit):
    """Raised by :func:`prepare_command`: a ``SystemExit`` whose message says what to install.

    Python prints the message on stderr and exits with status 1 when nothing catches it.
    """

    @property
    def message(self) -> str:
        return str(self.code)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken parent package, or a module whose __spec__ is None
        return False


def pip_requirement(distribution: str) -> str:
    """``distribution`` with the version range progemu declares for it (``torch==2.14.1``), else its name."""
    try:
        from importlib.metadata import PackageNotFoundError, requires

        declared = requires("progemu") or []
    except (ImportError, PackageNotFoundError):
        return distribution
    key = distribution.lower().replace("_", "-")
    for line in declared:
        spec = line.split(";")[0].strip()
        name = spec
        for stop in "<>=!~[ (":
            name = name.split(stop)[0]
        if name.lower().replace("_", "-") == key:
            return spec.replace(" ", "")
    return distribution


def _flag_value(argv: Sequence[str], flag: str) -> str | None:
    for index, item in enumerate(argv):
        if item == flag and index + 1 < len(argv):
            return argv[index + 1]
        if item.startswith(flag + "="):
            return item.split("=", 1)[1]
    return None


def missing_for(command: str, argv: Sequence[str] = ()) -> list[str]:
    """Import names ``command`` (with these arguments) needs that are not installed."""
    needs = list(COMMAND_NEEDS.get(command, ()))
    if command == "curate" and _flag_value(argv, "--annotator") == "llm":
        needs.append("openai")
    if command == "evaluate" and argv and argv[0] == "train-evaluators":
        needs = ["torch", "torchvision", "safetensors", "torchxrayvision", "open_clip"]
    elif command == "evaluate" and _text_backend(argv) in ("nltk", "both"):
        needs += ["nltk", "rouge_score", "wn"]
    return [module for module in dict.fromkeys(needs) if not _installed(module)]


def _message(command: str, missing: list[str]) -> str:
    extras = sorted({MODULES[m][1] for m in missing if MODULES.get(m, (None, None))[1]})
    base = [m for m in missing if not MODULES.get(m, (None, None))[1]]
    names = ", ".join(f"{m} (pip: {MODULES.get(m, (m, None))[0]})" for m in missing)
    lines = [f"progemu {command}: missing Python package(s): {names}."]
    if extras:
        lines.append(f"  install the '{','.join(extras)}' extra: pip install 'progemu[{','.join(extras)}]'")
    if base:
        requirements = " ".join(f"'{pip_requirement(MODULES.get(m, (m, None))[0])}'" for m in base)
        lines.append(f"  these belong to progemu's base install; install them with: pip install {requirements}"
                     " (or reinstall progemu without --no-deps)")
    lines.append("  nothing was done; run the command again afterwards.")
    return "\n".join(lines)


def _java_needed(command: str, argv: Sequence[str]) -> bool:
    if command == "demo":
        return True
    return (command == "evaluate" and not (argv and argv[0] == "train-evaluators") and "--no-meteor" not in argv
            and _text_backend(argv) != "nltk")  # NLTK's METEOR is Python


def _text_backend(argv: Sequence[str]) -> str:
    """``progemu evaluate``'s text backend: ``--text-backend``, else nltk under ``--recipe official``, else coco."""
    return _flag_value(argv, "--text-backend") or ("nltk" if _flag_value(argv, "--recipe") == "official" else "coco")


def prepare_command(command: str, argv: Sequence[str] | None = None) -> None:
    """Check ``command``'s packages (and Java for METEOR); quiet third-party bars unless ``--verbose``.

    Raises :class:`MissingDependencies` (a ``SystemExit`` whose message names the extra to
    install) before any work is done. ``--help`` / ``-h`` skip the check.
    """
    argv = list(argv or ())
    if "-h" in argv or "--help" in argv:
        return
    missing = missing_for(command, argv)
    if missing:
        raise MissingDependencies(_message(command, missing))
    if _java_needed(command, argv) and shutil.which("java") is None:
        skip = " or pass --no-meteor (METEOR is then left out)" if command == "evaluate" else ""
        raise MissingDependencies(
            f"progemu {command}: METEOR needs a Java runtime and `java` is not on PATH: install one "
            f"(Debian/Ubuntu: sudo apt-get install -y default-jre-headless){skip}; nothing was done.")
    if command in _LOADS_WEIGHTS:
        quiet_third_party(verbose="--verbose" in argv)


def quiet_third_party(verbose: bool = False) -> None:
    """Hide transformers' progress bars ("Loading weights", "Writing model shards") unless ``verbose``."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - the package check above reports it
        return
    if verbose:
        hf_logging.enable_progress_bar()
    else:
        hf_logging.disable_progress_bar()
