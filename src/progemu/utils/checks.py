"""Checks every command makes before it starts work: flag values, output paths, devices.

- argparse ``type=`` factories (:func:`int_range`, :func:`float_range` and the shorthands
  :data:`positive_int`, :data:`nonneg_int`) refuse zero / negative / out-of-range values
  while the command line is parsed, so argparse's one-line error names the flag;
- :class:`HelpFormatter` shows each option's default in ``--help`` (unless the help text
  already states it) and keeps the description's line breaks;
- :func:`check_out_dir` / :func:`check_out_file` / :func:`check_device` raise
  :class:`UsageError` (a ``ValueError``: every stage already reports those as one line)
  before any model loads or any file is written.
"""
from __future__ import annotations

import argparse
import errno
import os
from pathlib import Path

__all__ = ["UsageError", "ArgumentParser", "int_range", "float_range", "positive_int", "nonneg_int", "HelpFormatter",
           "check_out_dir", "check_out_file", "check_in_dir", "check_device", "describe_os_error"]


class UsageError(ValueError):
    """A problem with what the user asked for (a flag, a path); the command exits with status 2."""


def int_range(minimum: int | None = None, maximum: int | None = None):
    """argparse ``type=``: an integer in ``[minimum, maximum]`` (either bound optional)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def float_range(minimum: float | None = None, maximum: float | None = None, *, min_open: bool = False,
                max_open: bool = False):
    """argparse ``type=``: a finite float in the given interval (``*_open``: bound excluded)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if minimum is not None and (value < minimum or (min_open and value == minimum)):
            raise argparse.ArgumentTypeError(f"must be {'>' if min_open else '>='} {minimum:g}, got {value:g}")
        if maximum is not None and (value > maximum or (max_open and value == maximum)):
            raise argparse.ArgumentTypeError(f"must be {'<' if max_open else '<='} {maximum:g}, got {value:g}")
        return value

    parse.__name__ = "number"
    return parse


positive_int = int_range(1)
nonneg_int = int_range(0)


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one line (flag, problem, where to look), exit 2."""

    def error(self, message: str):  # noqa: D401 - argparse's API
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's layout and appends ``(default: X)`` to options that have a
    default their help text does not already mention."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or action.default == []:
            return text
        if "default" in text.lower() or "%(default)" in text or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)".strip()


def describe_os_error(error: OSError, path: str | os.PathLike | None = None) -> str:
    """One line for an ``OSError`` while writing: what happened to which path and what to do."""
    where = str(path or error.filename or "the output")
    if error.errno == errno.ENOSPC:
        return f"{where}: no space left on the device; free some disk space (or choose another --out) and run again"
    if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"{where}: cannot write here ({os.strerror(error.errno)}); choose a writable --out"
    if error.errno == errno.EDQUOT:
        return f"{where}: disk quota exceeded; free some space and run again"
    return f"{where}: {error.strerror or error}"


def check_out_dir(path: str | os.PathLike, flag: str = "--out", *, create: bool = True) -> Path:
    """``path`` is (or can become) a writable directory; raises :class:`UsageError` naming ``flag``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path}: is a file, not a folder; choose a folder (it is created if missing)")
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise UsageError(f"{flag} {path}: {existing} is a file, so this folder cannot be created")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: {existing} is not writable; choose a writable folder")
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UsageError(f"{flag} {path}: {describe_os_error(error, path)}") from None
    return path


def check_out_file(path: str | os.PathLike, flag: str = "--out") -> Path:
    """``path`` can be written as a file (it is not a folder; its folder is writable)."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag} {path}: is a folder; give a file name, e.g. {path / 'result.json'}")
    parent = path.parent if str(path.parent) else Path(".")
    check_out_dir(parent, flag, create=True)
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"{flag} {path}: the file exists and is not writable")
    return path


def check_in_dir(path: str | os.PathLike, flag: str, what: str = "folder") -> Path:
    """``path`` is an existing directory; raises :class:`UsageError` naming ``flag``."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{flag} {path}: {what} not found")
    if not path.is_dir():
        raise UsageError(f"{flag} {path}: is a file; expected a {what}")
    return path


def check_device(device: str | None, flag: str = "--device") -> None:
    """Refuse a CUDA device that is not there (before any model loads). ``None`` / auto / cpu pass."""
    if device is None or device in ("auto", "cpu"):
        return
    name = str(device)
    if not (name == "cuda" or name.startswith("cuda:")):
        if name in ("mps",) or name.startswith(("xpu", "mps")):
            return  # torch reports these itself, at load time
        raise UsageError(f"{flag} {name}: unknown device; use cpu, cuda or cuda:N")
    import torch

    if not torch.cuda.is_available():
        raise UsageError(f"{flag} {name}: no CUDA GPU is visible to torch on this machine; use {flag} cpu")
    if ":" in name:
        try:
            index = int(name.split(":", 1)[1])
        except ValueError:
            raise UsageError(f"{flag} {name}: expected cuda:N with an integer N") from None
        count = torch.cuda.device_count()
        if not 0 <= index < count:
            raise UsageError(f"{flag} {name}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
