"""The benchmark script's GPU section runs (on a tiny CPU model), so it is ready for a lent GPU."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

torch.set_num_threads(1)


def test_gpu_section_smoke(tmp_path):
    path = Path(__file__).resolve().parents[1] / "bench" / "bench_generate.py"
    spec = importlib.util.spec_from_file_location("bench_generate", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "gpu.md"
    assert module.main(["--gpu", "--smoke", "--text-tokens", "2", "--out", str(out)]) == 0
    table = out.read_text()
    assert "no CFG, batch 8" in table and "CFG 3, batch 1" in table and "transformers generate()" in table
