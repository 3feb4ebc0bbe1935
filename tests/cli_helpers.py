"""Run a ``progemu`` command and check how it fails: exit code, one line on stderr, no traceback, names X.

In-process (fast; the stages' ``main(argv)``) through :func:`run_cli`, or as a real process
through :func:`run_process` when a test needs signals, pipes or the interpreter's own
traceback printing. Both return a :class:`CliResult`; :func:`assert_one_line_error` is the
regression check of every "refuse with a clear message" case.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["CliResult", "run_cli", "run_process", "assert_one_line_error", "error_lines"]


@dataclasses.dataclass
class CliResult:
    code: int
    out: str
    err: str


def run_cli(argv: Sequence[str]) -> CliResult:
    """``progemu ARGV`` in this process (through :func:`progemu.cli.main`, so with its top-level
    error handler); argparse's ``SystemExit`` becomes the exit code."""
    from progemu.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            if exit_.code is not None and not isinstance(exit_.code, int):
                print(exit_.code, file=sys.stderr)
    return CliResult(int(code or 0), out.getvalue(), err.getvalue())


def run_process(argv: Sequence[str], *, timeout: float = 120, env: dict | None = None, **popen) -> CliResult:
    """``python -m progemu.cli ARGV`` as a child process (one torch thread)."""
    environment = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    environment.pop("PROGEMU_DEBUG", None)
    done = subprocess.run([sys.executable, "-m", "progemu.cli", *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout, env=environment, **popen)
    return CliResult(done.returncode, done.stdout, done.stderr)


def error_lines(text: str) -> list[str]:
    """Non-empty stderr lines, without progress-bar redraws and log records of the normal run."""
    return [line for line in text.splitlines() if line.strip() and not line.startswith(("INFO ", "\r"))]


def assert_one_line_error(result: CliResult, *names: str, code: int | None = None) -> str:
    """The command failed with ``code`` (any non-zero when ``None``), wrote exactly one line to
    stderr, no traceback, and that line names every one of ``names``; returns the line."""
    lines = error_lines(result.err)
    assert result.code != 0, f"expected a failure, got exit 0; stdout: {result.out[-500:]!r}"
    if code is not None:
        assert result.code == code, f"exit {result.code}, expected {code}; stderr: {result.err!r}"
    assert "Traceback" not in result.err, result.err
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}: {result.err!r}"
    line = lines[0]
    for name in names:
        assert str(name) in line, f"{name!r} not named in: {line!r}"
    return line


def write_tiny_png(path: str | os.PathLike, *, size: int = 96, colour: bool = False, blank: bool = False) -> Path:
    """A small chest-like greyscale PNG (or a colour / blank one) for input checks."""
    import numpy as np
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size] / size
    grey = 0.3 + 0.4 * np.exp(-((xx - 0.5) ** 2 + (yy - 0.5) ** 2) / 0.05) - 0.2 * (np.abs(xx - 0.5) > 0.15)
    grey = np.full((size, size), 0.5) if blank else grey
    pixels = (np.clip(grey, 0, 1) * 255).astype(np.uint8)
    if colour:
        rgb = np.stack([pixels, np.roll(pixels, size // 3, axis=1), 255 - pixels], axis=-1)
        Image.fromarray(rgb, "RGB").save(path)
    else:
        Image.fromarray(pixels, "L").save(path)
    return path
