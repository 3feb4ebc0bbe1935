"""Helpers for the serve tests: a small fake pipeline with the generation API, test images, a server.

``FakePipeline`` has exactly the interface of ``progemu.generate.ProgEmuPipeline.__call__``
(``pipe(prior, prompt, samples=, cfg_scale=, seed=, progress=) -> result`` with
``counterfactuals``, ``interpretation``, ``phrases``, ``attention``, ``difference``, ``spread``,
``settings``, ``timings``, ``save``), and a known output: the counterfactual is the prior resized
to 64 px with a bright disc added on the hypothesis' side (image right = patient's left), so the
tests can check the page shows *that* image.
"""
from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
from pathlib import Path

import numpy as np

SIZE = 64  # px of the fake counterfactual
GRID = 8  # attention grid (image tokens per side)


@dataclasses.dataclass
class FakeResult:
    counterfactuals: list[np.ndarray]
    interpretation: str
    phrases: list[str]
    attention: dict[str, np.ndarray]
    difference: np.ndarray
    spread: np.ndarray | None
    settings: dict
    timings: dict

    def save(self, out_dir) -> Path:
        from progemu.utils.atomic import atomic_save_png, atomic_write_json

        out_dir = Path(out_dir)
        for index, image in enumerate(self.counterfactuals):
            atomic_save_png(out_dir / f"counterfactual_{index}.png", image)
        atomic_write_json(out_dir / "result.json", {"interpretation": self.interpretation, "phrases": self.phrases,
                                                   "settings": self.settings, "timings": self.timings})
        return out_dir


def resize(image: np.ndarray, size: int = SIZE) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(np.asarray(image, np.float32), mode="F").resize((size, size), Image.Resampling.BILINEAR), np.float32)


class FakePipeline:
    """Deterministic stand-in for ``ProgEmuPipeline``; records its calls in ``self.calls``."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.calls: list[dict] = []
        self.active = 0  # calls running right now; max_active proves the queue serialises them
        self.max_active = 0
        self._lock = threading.Lock()

    def __call__(self, prior, prompt, samples=1, cfg_scale=3.0, seed=0, progress=None):
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            return self._generate(prior, prompt, samples, cfg_scale, seed, progress)
        finally:
            with self._lock:
                self.active -= 1

    def _generate(self, prior, prompt, samples, cfg_scale, seed, progress):
        self.calls.append({"shape": np.shape(prior), "prompt": prompt, "samples": samples, "cfg_scale": cfg_scale, "seed": seed})
        base = np.clip(resize(prior), 0, 1)
        yy, xx = np.mgrid[0:SIZE, 0:SIZE]
        centre_x = SIZE * 0.72 if "left" in prompt.lower() else SIZE * 0.28
        rng = np.random.default_rng(seed)
        images = []
        for k in range(samples):
            radius = 10 + 2 * rng.random()
            disc = ((xx - centre_x) ** 2 + (yy - SIZE * 0.7) ** 2) < radius**2
            images.append(np.clip(base + 0.5 * disc, 0, 1).astype(np.float32))
            if progress is not None:
                progress(k + 1, samples)
            if self.delay_s:
                time.sleep(self.delay_s / samples)
        phrases = ["blunting of the costophrenic angle", "a new opacity"]
        interpretation = f"There is {phrases[0]} and {phrases[1]} consistent with the hypothesis."
        gy, gx = np.mgrid[0:GRID, 0:GRID]
        attention = {
            phrases[0]: np.exp(-((gx - centre_x / SIZE * GRID) ** 2 + (gy - 0.7 * GRID) ** 2) / 2.0).astype(np.float32),
            phrases[1]: np.exp(-((gx - 4) ** 2 + (gy - 2) ** 2) / 2.0).astype(np.float32),
        }
        stack = np.stack(images)
        return FakeResult(
            counterfactuals=images,
            interpretation=interpretation,
            phrases=phrases,
            attention=attention,
            difference=(stack.mean(0) - base).astype(np.float32),
            spread=stack.std(0).astype(np.float32) if samples > 1 else None,
            settings={"samples": samples, "cfg_scale": cfg_scale, "seed": seed},
            timings={"total_s": 0.0},
        )


def write_test_images(directory: Path) -> dict[str, Path]:
    """A greyscale chest-like PNG, a colour photo PNG, a text file, a tiny PNG, a blank PNG."""
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:256, 0:256] / 255.0
    lungs = np.exp(-(((xx - 0.3) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2)) + np.exp(-(((xx - 0.7) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2))
    chest = np.clip(0.8 - 0.6 * lungs + 0.05 * np.sin(40 * yy), 0, 1)
    paths = {}
    paths["chest"] = directory / "chest.png"
    Image.fromarray(np.rint(chest * 255).astype(np.uint8)).save(paths["chest"])
    colour = np.stack([xx * 255, yy * 255, np.full_like(xx, 40)], axis=-1).astype(np.uint8)
    paths["photo"] = directory / "holiday.png"
    Image.fromarray(colour).save(paths["photo"])
    paths["text"] = directory / "notes.txt"
    paths["text"].write_text("patient notes: not an image\n")
    paths["tiny"] = directory / "tiny.png"
    Image.fromarray(np.rint(chest[:32, :32] * 255).astype(np.uint8)).save(paths["tiny"])
    paths["blank"] = directory / "blank.png"
    Image.fromarray(np.full((128, 128), 128, np.uint8)).save(paths["blank"])
    return paths


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


# ------------------------------------------------------------------ the real path: tiny checkpoint + CLI server
_CHECKPOINT: dict[str, Path] = {}


def tiny_real_checkpoint() -> Path:
    """A tiny random ProgEmu checkpoint written by progemu's own saver (made once per test process).

    Uses ``tests/generate_fixtures.tiny_checkpoint`` (the generation tests' helper), so the page is
    tested on exactly what ``progemu train`` writes and ``ProgEmuPipeline.from_pretrained`` reads.
    """
    if "path" not in _CHECKPOINT:
        import atexit
        import shutil
        import tempfile

        from generate_fixtures import tiny_checkpoint

        root = Path(tempfile.mkdtemp(prefix="progemu-serve-test-ckpt-"))
        atexit.register(shutil.rmtree, root, True)
        _CHECKPOINT["path"] = Path(tiny_checkpoint(root / "ckpt"))
    return _CHECKPOINT["path"]


class ServeProcess:
    """``progemu serve`` in a subprocess on a free loopback port; ``with ServeProcess(...) as url``.

    ``tmpdir`` becomes the child's TMPDIR so a test can check the private upload cache is removed.
    """

    def __init__(self, args: list[str], tmpdir: Path, timeout_s: float = 180.0) -> None:
        import os
        import sys

        self.port = free_port()
        self.tmpdir = Path(tmpdir)
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        self.command = [sys.executable, "-m", "progemu.cli", "serve", *args, "--port", str(self.port)]
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(self.tmpdir), "PYTHONUNBUFFERED": "1"}
        self.timeout_s = timeout_s
        self.process = None
        self.output: list[str] = []

    def __enter__(self) -> str:
        import subprocess

        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env)
        reader = threading.Thread(target=self._read, daemon=True)
        reader.start()
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            for line in list(self.output):
                if "progemu serve: open " in line:
                    return line.split("open ", 1)[1].split()[0]
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("progemu serve did not start:\n" + "".join(self.output[-40:]))

    def _read(self) -> None:
        for line in self.process.stdout:
            self.output.append(line)

    def stop(self) -> int | None:
        import signal

        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except Exception:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __exit__(self, *exc) -> None:
        self.stop()
