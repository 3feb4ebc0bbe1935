"""`progemu demo`: the main job end to end, and the committed demo weights.

Both tests are slow (minutes on 2 cores) and run in CI:
- the retrain path on a miniature world exercises every stage's command in order, the stage
  skipping that makes a killed demo resumable, and ``--save-assets``;
- the committed weights are loaded and evaluated on the demo world exactly as ``make demo`` does,
  and must still reach the quality recorded in ``assets/demo/MANIFEST.json`` when they were made.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from progemu.demo import ASSETS_DIR, DemoConfig, main, run_demo

pytestmark = pytest.mark.slow


def test_retrain_on_a_miniature_world_then_resume_skips_every_stage(tmp_path, capsys):
    out, assets = tmp_path / "demo", tmp_path / "assets"
    argv = ["--out", str(out), "--retrain", "--patients", "40", "--image-size", "128", "--workers", "1",
            "--tokenizer-steps", "6", "--train-steps", "4", "--train-batch-size", "4", "--max-eval-pairs", "3",
            "--top-k", "16", "--save-assets", str(assets)]
    assert main(argv) == 0
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert {"progemu", "copy-prior", "oracle"} <= set(metrics["rows"])
    assert metrics["n_pairs"] >= 1
    assert (out / "eval" / "report.html").read_text().lstrip().lower().startswith("<!doctype html")
    manifest = json.loads((assets / "MANIFEST.json").read_text())
    assert manifest["metrics"]["rows"]["progemu"] == metrics["rows"]["progemu"]
    assert (assets / "model" / "progemu.json").exists() and (assets / "evaluators" / "evaluators.json").exists()
    assert not list((assets / "model").glob("checkpoints"))  # training state is not shipped
    # the sampling settings of the evaluation travel with the weights
    meta = json.loads((assets / "model" / "progemu.json").read_text())
    assert meta["sampling"] == {"cfg_scale": 3.0, "temperature": 0.7, "top_k": 16, "text_temperature": 0.0, "anchor": 2.0}
    assert meta["layout"]["followup_position"] > 0  # the demo's recipe: aligned positions
    capsys.readouterr()
    assert main(argv[:-2]) == 0  # everything done: every stage is skipped
    log = capsys.readouterr().out
    for stage in ("synth", "curate", "tokenizer", "train model", "train-evaluators", "evaluate"):
        assert f"[demo] {stage}: already done" in log


@pytest.mark.skipif(not (ASSETS_DIR / "MANIFEST.json").exists(), reason="no committed demo weights in this checkout")
def test_committed_demo_weights_load_and_still_reach_the_recorded_quality(tmp_path):
    manifest = json.loads((ASSETS_DIR / "MANIFEST.json").read_text())
    recorded = manifest["config"]
    config = DemoConfig(**{**recorded, "retrain": False, "workers": 2})
    run_demo(tmp_path / "demo", config)
    metrics = json.loads((tmp_path / "demo" / "eval" / "metrics.json").read_text())
    assert metrics["n_pairs"] == manifest["metrics"]["n_pairs"]
    ours, before = metrics["rows"]["progemu"], manifest["metrics"]["rows"]["progemu"]
    # CPU kernels may round differently from the machine that recorded the numbers, which can flip a
    # sampled token; the quality must stay close to what was recorded ...
    for name in ("BLEU-3", "METEOR", "ROUGE-L", "AUROC"):
        if before.get(name) is not None:
            assert ours[name] == pytest.approx(before[name], abs=0.05), name
    # ... and every comparison with copy-prior that held when the weights were made must still hold
    copy_now, copy_then = metrics["rows"]["copy-prior"], manifest["metrics"]["rows"]["copy-prior"]
    for name in ("BLEU-3", "METEOR", "ROUGE-L"):
        if before.get(name) is not None and before[name] > copy_then[name]:
            assert ours[name] > copy_now[name], name
    changed_now, changed_then = metrics["changed_findings"], manifest["metrics"]["changed_findings"]
    for name in ("AUROC", "F1"):
        then = changed_then.get("progemu", {}).get(name), changed_then.get("copy-prior", {}).get(name)
        if None not in then and then[0] > then[1]:
            assert changed_now["progemu"][name] > changed_now["copy-prior"][name], name
