"""`progemu evaluate` on a real (tiny) synthetic world: synth -> curate -> evaluators -> evaluate.

Uses the upstream stages' own commands and the generation engineer's tiny checkpoints
(``tests/generate_fixtures.py``), so the ProgEmu and ProgEmu² rows run the real pipelines.
"""
from __future__ import annotations

import json

import pytest

from evaluate_fixtures import one_torch_thread, train_tiny_evaluators  # noqa: F401 (autouse fixture)
from progemu.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    assert main(["synth", "--out", str(root / "world"), "--patients", "30", "--image-size", "128", "--quiet"]) == 0
    assert main(["curate", "--mimic", str(root / "world" / "mimic-cxr-jpg"), "--out", str(root / "data"),
                 "--image-size", "128", "--quiet"]) == 0
    evaluators = train_tiny_evaluators(root / "data", root / "evaluators", epochs=3)
    return root, root / "data", evaluators


def test_direct_fidelity_separates_oracle_from_copy_prior(world):
    from progemu.evaluate.runner import EvaluateConfig, evaluate

    root, data, evaluators = world
    metrics = evaluate(EvaluateConfig(data=str(data), out=str(root / "refs"), evaluators=str(evaluators),
                                      meteor=False), progress=False)
    assert metrics["ground_truth"] == str(root / "world" / "ground_truth.jsonl")  # found via curate_config.json
    oracle, copy = metrics["fidelity_detail"]["oracle"], metrics["fidelity_detail"]["copy-prior"]
    assert oracle["method"] == "direct" and oracle["direct"]["pairs_matched"] == metrics["n_pairs"]
    assert oracle["direct"]["n"] > 0
    assert copy["direct"]["score"] == 0.0  # nothing moves
    assert oracle["direct"]["score"] >= 0.75  # the real follow-up shows the true changes
    assert copy["direct"]["unchanged_stable"] == 1.0 and oracle["direct"]["n_unchanged"] > 0
    assert 0.5 <= oracle["direct"]["unchanged_stable"] <= 1.0


def test_evaluate_with_real_pipelines_and_cache(world, tmp_path):
    from generate_fixtures import tiny_checkpoint, tiny_image_tokenizer

    root, data, evaluators = world
    image_tokenizer = tiny_image_tokenizer()
    joint = tiny_checkpoint(tmp_path / "joint", "joint", seed=0, image_tokenizer=image_tokenizer)
    image = tiny_checkpoint(tmp_path / "image", "image", seed=1, image_tokenizer=image_tokenizer)
    text = tiny_checkpoint(tmp_path / "text", "text", seed=2, image_tokenizer=image_tokenizer)
    argv = ["evaluate", "--model", str(joint), "--cascade-image", str(image), "--cascade-text", str(text),
            "--data", str(data), "--out", str(tmp_path / "out"), "--evaluators", str(evaluators), "--max-pairs", "3",
            "--figure-pairs", "2", "--gen-option", "max_text_tokens=8", "--no-meteor", "--quiet"]
    assert main(argv) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert list(metrics["rows"]) == ["progemu", "progemu2", "copy-prior", "reconstructed-prior", "oracle"]
    # the tokenizer round trip of the prior: retrieved text like copy-prior, an image close to (not equal to) the prior
    reconstructed = metrics["rows"]["reconstructed-prior"]
    assert reconstructed["ROUGE-L"] == metrics["rows"]["copy-prior"]["ROUGE-L"]
    assert -1 <= reconstructed["NCC-prior"] < metrics["rows"]["copy-prior"]["NCC-prior"] == pytest.approx(1.0)
    assert metrics["n_pairs"] == 3 and metrics["rows"]["progemu2"]["FID"] is not None
    index = tmp_path / "out" / "generations" / "progemu" / "index.jsonl"
    records = [json.loads(line) for line in index.read_text().splitlines()]
    assert len(records) == 3 and records[0]["attention"] == "attention.npy"  # figure pairs carry attention maps
    assert (tmp_path / "out" / "figures" / "fig4_progemu_0.png").exists()
    assert (tmp_path / "out" / "figures" / "fig3_comparison.png").exists()
    # a re-run without --model reads every generation from the cache (no model is opened)
    at = argv.index("--model")
    del argv[at:at + 2]
    assert main(argv) == 0
    assert len(index.read_text().splitlines()) == 3
    again = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert again["rows"]["progemu"] == metrics["rows"]["progemu"]
