"""No stage reuses an output it did not make: outputs keyed by what made them, verified before use.

The stage half of the robustness suite (the command-line half is ``test_robustness.py``):
evaluation generations keyed by model identity + sampling settings, the demo refusing a
re-run with other options and resuming a run killed during synth, direct fidelity matching
the pairs of both datasets, verified code caches, and resumes that refuse a changed model.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import assert_one_line_error, run_cli
from progemu.utils.identity import StaleOutputError


# ---- evaluation: generations keyed by model identity + settings + pair -----------------------------

class _CountingPipeline:
    """The generation contract's ``generate_batch``: a counterfactual that is the prior, brightened by
    ``shift`` (so two "models" give different images), and the prompt as interpretation."""

    def __init__(self, shift: float = 0.0):
        self.shift, self.calls = shift, 0

    def generate_batch(self, priors, prompts, samples=1, seed=0, attention=False, **options):
        import types

        self.calls += len(priors)
        return [types.SimpleNamespace(counterfactuals=[np.clip(p + self.shift, 0, 1)] * samples,
                                      interpretation=f"{prompt} {sorted(options.items())}", phrases=[], attention={})
                for p, prompt in zip(priors, prompts)]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from evaluate_fixtures import make_tiny_dataset

    root = tmp_path_factory.mktemp("robust-eval")
    return make_tiny_dataset(root / "data", n_train=4, n_test=4, size=32)


def _checkpoint(path: Path, weights: bytes) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text('{"num_hidden_layers": 2}')
    (path / "model.safetensors").write_bytes(weights)
    return path


def _row(data, out, model, pipeline, **settings):
    from progemu.data.icgcxr import load_pairs
    from progemu.evaluate.runner import EvaluateConfig, _model_row

    config = EvaluateConfig(data=str(data), out=str(out), model=str(model), **settings)
    pairs = load_pairs(data, split="test")
    return _model_row("progemu", Path(out) / "generations", pairs, lambda: pipeline, config, False,
                      models={"model": config.model})


def test_generations_of_another_model_or_settings_are_never_reused(tiny_data, tmp_path):
    model_a = _checkpoint(tmp_path / "A", b"weights of A")
    model_b = _checkpoint(tmp_path / "B", b"weights of B")
    out = tmp_path / "eval"
    first = _CountingPipeline(shift=0.0)
    row_a = _row(tiny_data, out, model_a, first)
    assert first.calls == 4
    again = _CountingPipeline()
    _row(tiny_data, out, model_a, again)
    assert again.calls == 0  # same model, same settings: every generation is reused
    for model, settings, named in [
        (model_b, {}, "--model"),
        (model_a, {"samples": 2}, "--samples 1 (now 2)"),
        (model_a, {"generate_kwargs": {"cfg_scale": 3.0}}, "--cfg"),
        (model_a, {"seed": 5}, "--seed 0 (now 5)"),
        (model_a, {"generate_kwargs": {"temperature": 0.7}}, "--gen-option temperature"),
    ]:
        with pytest.raises(StaleOutputError, match="--overwrite") as refused:
            _row(tiny_data, out, model_b if model is model_b else model, _CountingPipeline(), **settings)
        assert named in str(refused.value)
    # --overwrite discards them and the table is made of model B's generations
    fresh = _CountingPipeline(shift=0.3)
    row_b = _row(tiny_data, out, model_b, fresh, overwrite=True)
    assert fresh.calls == 4
    assert row_b.key["models"]["model"] != row_a.key["models"]["model"]
    assert not np.allclose(row_b.images[0], row_a.images[0])


def test_evaluate_cli_refuses_a_second_model_into_the_same_out(tiny_data, tmp_path):
    """The issue's command pair: the second run names what differs (before loading anything slow)
    instead of printing model A's generations under model B's settings."""
    model_a, model_b = _checkpoint(tmp_path / "A", b"A"), _checkpoint(tmp_path / "B", b"B")
    out = tmp_path / "eval"
    _row(tiny_data, out, model_a, _CountingPipeline())  # what the first `progemu evaluate --model A` cached
    no_evaluators = tmp_path / "no-evaluators"  # would fail to load: the refusal must come first
    no_evaluators.mkdir()
    result = run_cli(["evaluate", "--model", model_b, "--data", tiny_data, "--out", out, "--evaluators", no_evaluators,
                      "--cfg", "3", "--samples", "2", "--quiet"])
    line = assert_one_line_error(result, "cached generations", "--model", "--samples 1 (now 2)", "--cfg",
                                 "--overwrite", code=2)
    assert str(out / "generations" / "progemu") in line


def test_a_cache_without_a_model_is_read_as_it_is_and_reports_its_key(tiny_data, tmp_path):
    from progemu.data.icgcxr import load_pairs
    from progemu.evaluate.runner import EvaluateConfig, _model_row

    model = _checkpoint(tmp_path / "A", b"A")
    _row(tiny_data, tmp_path / "eval", model, _CountingPipeline(), samples=1, seed=3)
    config = EvaluateConfig(data=str(tiny_data), out=str(tmp_path / "eval"))
    row = _model_row("progemu", tmp_path / "eval" / "generations", load_pairs(tiny_data, split="test"), None, config,
                     False)
    assert row.key["seed"] == 3 and row.key["models"]["model"] is not None and len(row.images) == 4


# ---- the demo: re-runs with other options, a run killed during synth --------------------------------

@pytest.fixture
def fake_stages(monkeypatch):
    """Every demo stage replaced by a stand-in that writes the stage's outputs and done marker (last)."""
    from progemu import demo
    from progemu.synth.cli import DONE_NAME

    calls: list[str] = []

    def make(command):
        def main(argv):
            out = Path(argv[argv.index("--out") + 1])
            out.mkdir(parents=True, exist_ok=True)
            calls.append(command)
            if command == "synth":
                (out / "synth_config.json").write_text("{}")
                (out / DONE_NAME).write_text("{}")
            elif command == "curate":
                (out / "dataset_card.md").write_text("card")
            elif command == "evaluate":
                (out / "table.md").write_text("| method |\n")
                (out / "report.html").write_text("<!doctype html>")
            return 0
        return main

    monkeypatch.setattr(demo, "_command_main", make)
    return calls


def test_demo_rerun_with_other_options_is_refused_naming_them(fake_stages, tmp_path):
    out = tmp_path / "demo"
    assert run_cli(["demo", "--out", out, "--patients", "30", "--workers", "1"]).code == 0
    assert fake_stages == ["synth", "curate", "evaluate"]
    assert run_cli(["demo", "--out", out, "--patients", "30", "--workers", "2"]).code == 0  # speed only: all skipped
    assert fake_stages == ["synth", "curate", "evaluate"]
    saved = (out / "demo_config.json").read_text()
    result = run_cli(["demo", "--out", out, "--patients", "30", "--cfg", "2"])
    assert_one_line_error(result, "--cfg 3.0 (now 2.0)", "--overwrite", "--out", code=2)
    assert (out / "demo_config.json").read_text() == saved  # the refused run changed nothing
    result = run_cli(["demo", "--out", out, "--patients", "50", "--top-k", "8"])
    assert_one_line_error(result, "--patients 30 (now 50)", "--top-k 64 (now 8)", code=2)


def test_demo_overwrite_redoes_only_the_stages_the_options_affect(fake_stages, tmp_path):
    out = tmp_path / "demo"
    assert run_cli(["demo", "--out", out, "--patients", "30"]).code == 0
    fake_stages.clear()
    assert run_cli(["demo", "--out", out, "--patients", "30", "--cfg", "2", "--overwrite"]).code == 0
    assert fake_stages == ["evaluate"]  # the world and the dataset are kept
    assert json.loads((out / "demo_config.json").read_text())["cfg"] == 2.0
    fake_stages.clear()
    assert run_cli(["demo", "--out", out, "--patients", "40", "--cfg", "2", "--overwrite"]).code == 0
    assert fake_stages == ["synth", "curate", "evaluate"]


def test_a_demo_killed_during_synth_runs_synth_again(fake_stages, tmp_path):
    out = tmp_path / "demo"
    (out / "world").mkdir(parents=True)
    (out / "world" / "synth_config.json").write_text("{}")  # written first by the world's writer; no done marker
    assert run_cli(["demo", "--out", out, "--patients", "30"]).code == 0
    assert fake_stages == ["synth", "curate", "evaluate"]


def test_synth_writes_its_done_marker_last_and_a_finished_world_is_not_redone(tmp_path):
    world = tmp_path / "world"
    assert run_cli(["synth", "--out", world, "--patients", "3", "--image-size", "64", "--quiet"]).code == 0
    marker = json.loads((world / "synth_done.json").read_text())
    assert marker["patients"] == 3 and marker["image_size"] == 64
    newest_other = max(p.stat().st_mtime_ns for p in world.rglob("*") if p.is_file() and p.name != "synth_done.json")
    assert (world / "synth_done.json").stat().st_mtime_ns >= newest_other
    again = run_cli(["synth", "--out", world, "--patients", "3", "--image-size", "64", "--quiet"])
    assert again.code == 0 and "nothing to do" in again.out
    other = run_cli(["synth", "--out", world, "--patients", "4", "--image-size", "64", "--quiet"])
    assert_one_line_error(other, "another config", code=2)


# ---- direct fidelity: one id normalisation for both datasets ----------------------------------------

def test_study_ids_of_both_datasets_normalise_to_one_key():
    from progemu.utils.ids import study_key

    assert study_key("patient00003", "2") == study_key("00003", "0002") == study_key("3", 2) == ("3", "2")
    assert study_key("p10000032", "s50414267") == study_key("10000032", "50414267") == ("10000032", "50414267")
    assert study_key("abc", "x1") == ("abc", "x1")  # not numbers: unchanged


def test_direct_fidelity_matches_every_pair_of_both_datasets(tmp_path):
    from progemu.data.icgcxr import load_pairs
    from progemu.evaluate.fidelity import direct_fidelity
    from progemu.evaluate.images import load_image
    from progemu.evaluate.report import markdown_table

    world, data = tmp_path / "world", tmp_path / "data"
    assert run_cli(["synth", "--out", world, "--patients", "8", "--image-size", "64", "--quiet"]).code == 0
    assert run_cli(["curate", "--mimic", world / "mimic-cxr-jpg", "--chexpert-plus", world / "chexpert-plus",
                    "--out", data, "--image-size", "64", "--quiet"]).code == 0
    pairs = load_pairs(data)
    plus = [p for p in pairs if p.source == "chexpertplus"]
    assert plus and len(plus) < len(pairs)  # both datasets present
    detail = direct_fidelity(pairs, [load_image(p.followup_image) for p in pairs], world / "ground_truth.jsonl")
    assert detail["pairs_matched"] == detail["pairs_total"] == len(pairs)
    metrics = {"rows": {"oracle": {}}, "n_pairs": len(pairs), "split": "all", "evaluators": {},
               "fidelity_detail": {"oracle": {"method": "direct", "direct": detail}}}
    assert f"direct, {len(pairs)} of {len(pairs)} pairs, {detail['n']} changes" in markdown_table(metrics)


# ---- code caches verified before use ---------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_tokenizer():
    import torch

    from progemu.tokenizer import ImageTokenizer
    from tokenizer_fixtures import TINY

    torch.set_num_threads(1)
    return ImageTokenizer.from_config(TINY, seed=0)


def test_a_truncated_or_altered_code_shard_is_refused_and_re_encoded(tmp_path, tiny_tokenizer):
    from progemu.tokenizer.cache import CodeCache, CorruptCacheError, ensure_codes
    from tokenizer_fixtures import write_image_folder

    data = tmp_path / "data"
    paths = write_image_folder(data, patients=3, per_patient=2)
    cache = ensure_codes(data, tiny_tokenizer, batch_size=4, progress=False)
    reference = cache.get_many(paths)
    shard = cache.root / f"codes-{cache.plan}.npy"
    sums = json.loads((cache.root / "checksums.json").read_text())
    assert sums["files"][shard.name]["bytes"] == shard.stat().st_size
    del cache
    os.truncate(shard, 200)  # `truncate -s 200`: numpy would silently grow it back with zeros
    with pytest.raises(CorruptCacheError, match=f"{shard.name}: 200 bytes, its header says"):
        CodeCache(data, tiny_tokenizer.identity)
    repaired = ensure_codes(data, tiny_tokenizer, batch_size=4, progress=False)  # `progemu tokenize` re-encodes
    np.testing.assert_array_equal(repaired.get_many(paths), reference)
    del repaired
    # same length, other content: only the checksum can tell
    with open(shard, "r+b") as handle:
        handle.seek(-4, os.SEEK_END)
        handle.write(b"\x07\x00\x00\x00")
    with pytest.raises(CorruptCacheError, match="checksum"):
        CodeCache(data, tiny_tokenizer.identity)
    np.testing.assert_array_equal(ensure_codes(data, tiny_tokenizer, progress=False).get_many(paths), reference)


def test_a_code_cache_of_another_tokenizer_is_refused(tmp_path, tiny_tokenizer):
    from progemu.tokenizer.cache import CodeCache, CorruptCacheError, ensure_codes
    from tokenizer_fixtures import write_image_folder

    data = tmp_path / "data"
    write_image_folder(data, patients=2, per_patient=2)
    cache = ensure_codes(data, tiny_tokenizer, progress=False)
    info = json.loads((cache.root / "tokenizer.json").read_text())
    (cache.root / "tokenizer.json").write_text(json.dumps({**info, "identity": "0123456789abcdef"}))
    with pytest.raises(CorruptCacheError, match="codes of tokenizer 0123456789abcdef"):
        CodeCache(data, tiny_tokenizer.identity)


# ---- resumes that would change the model are refused ------------------------------------------------

def test_train_resume_with_another_preset_is_refused(tmp_path):
    from progemu.train.cli import build_parser, config_from_args
    from progemu.utils.config import save_config

    data, out = tmp_path / "data", tmp_path / "run"
    data.mkdir()
    out.mkdir()
    argv = ["--data", str(data), "--tokenizer", str(data), "--out", str(out), "--preset", "tiny", "--device", "cpu"]
    save_config(config_from_args(build_parser().parse_args(argv)), out / "train_config.json", kind="TrainConfig")
    result = run_cli(["train", *argv[:-4], "--preset", "small", "--device", "cpu", "--resume"])
    assert_one_line_error(result, "--preset 'tiny' (now 'small')", "--resume", "new --out", code=1)
    result = run_cli(["train", *argv, "--resume", "--mode", "text"])
    assert_one_line_error(result, "--mode 'joint' (now 'text')", code=1)


def test_train_resume_on_another_dataset_or_tokenizer_is_refused(tmp_path):
    from progemu.train.cli import INPUTS_NAME, build_parser, check_resume
    from train_fixtures import make_dataset, make_image_tokenizer

    data, tokenizer, out = make_dataset(tmp_path / "data", n_pairs=2), make_image_tokenizer(tmp_path / "tok"), tmp_path / "run"
    out.mkdir()
    argv = ["--data", str(data), "--tokenizer", str(tokenizer), "--out", str(out), "--device", "cpu"]
    check_resume(build_parser().parse_args(argv))  # a fresh run records what it trains on
    recorded = json.loads((out / INPUTS_NAME).read_text())
    assert recorded["data"] and recorded["tokenizer"]
    from progemu.train.cli import config_from_args
    from progemu.utils.config import save_config

    save_config(config_from_args(build_parser().parse_args(argv)), out / "train_config.json", kind="TrainConfig")
    check_resume(build_parser().parse_args([*argv, "--resume"]))  # same inputs: resumes
    other = make_dataset(tmp_path / "other", n_pairs=3, seed=1)
    result = run_cli(["train", "--data", other, "--tokenizer", tokenizer, "--out", out, "--device", "cpu", "--resume"])
    assert_one_line_error(result, "--data (its manifest.jsonl)", "--resume", code=1)


def test_curate_rerun_with_another_image_size_names_both_values(tmp_path):
    from progemu.curate.config import CurateConfig
    from progemu.curate.pipeline import _check_resume
    from progemu.utils.config import config_to_dict, save_config

    out = tmp_path / "data"
    out.mkdir()
    save_config(CurateConfig(mimic="/m", out=str(out), image_size=64), out / "curate_config.json")
    _check_resume(CurateConfig(mimic="/m", out=str(out), image_size=64, workers=4), out)  # speed only: resumes
    with pytest.raises(StaleOutputError, match=r"--image-size 64 \(now 128\)"):
        _check_resume(CurateConfig(mimic="/m", out=str(out), image_size=128), out)
    assert config_to_dict(CurateConfig())["image_size"] == 512
