"""Sampling settings travel with the weights; ``demo`` names the packaged demo model.

The committed demo model carries the settings ``progemu demo`` evaluates it with; they are the
defaults of ``ProgEmuPipeline``, ``progemu generate`` and ``progemu serve``; flags override them
one by one; ``result.json`` records what was used.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from progemu.generate.model_defaults import (DEMO_MODEL_DIR, read_sampling_defaults, resolve_model_dir,
                                             write_sampling_defaults)

#: what the committed demo model was evaluated with (MANIFEST.json)
DEMO_SETTINGS = {"cfg_scale": 3.0, "temperature": 0.7, "top_k": 64, "text_temperature": 0.0, "anchor": 2.0}
needs_demo = pytest.mark.skipif(not (DEMO_MODEL_DIR / "progemu.json").exists(), reason="no committed demo weights")


@needs_demo
def test_the_committed_demo_model_carries_the_settings_the_demo_evaluates_with():
    from progemu.demo import DemoConfig, sampling_settings

    assert read_sampling_defaults(DEMO_MODEL_DIR) == DEMO_SETTINGS
    assert sampling_settings(DemoConfig()) == DEMO_SETTINGS  # what `make demo` evaluates the committed model with
    manifest = json.loads((DEMO_MODEL_DIR.parent / "MANIFEST.json").read_text())["config"]
    assert {"cfg_scale": manifest["cfg"], "temperature": manifest["temperature"], "top_k": manifest["top_k"],
            "text_temperature": manifest["text_temperature"], "anchor": manifest.get("anchor", 0.0)} == DEMO_SETTINGS


def test_demo_means_the_packaged_model_unless_a_folder_of_that_name_exists(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_model_dir("demo") == DEMO_MODEL_DIR
    assert resolve_model_dir("model") == Path("model")
    (tmp_path / "demo").mkdir()
    assert resolve_model_dir("demo") == Path("demo")


def test_write_then_read_keeps_the_other_keys_and_rejects_unknown_or_invalid_settings(tmp_path):
    (tmp_path / "progemu.json").write_text(json.dumps({"schema": 1, "mode": "joint", "layout": {}}))
    assert read_sampling_defaults(tmp_path) == {}
    write_sampling_defaults(tmp_path, {"cfg_scale": 2.0, "top_k": 16}, note="measured on split test")
    meta = json.loads((tmp_path / "progemu.json").read_text())
    assert meta["sampling"] == {"cfg_scale": 2.0, "top_k": 16} and meta["sampling_note"] == "measured on split test"
    assert meta["schema"] == 1 and meta["mode"] == "joint"
    assert read_sampling_defaults(tmp_path) == {"cfg_scale": 2.0, "top_k": 16}
    with pytest.raises(ValueError, match=r"unknown sampling setting\(s\) \['guidance'\]"):
        write_sampling_defaults(tmp_path, {"guidance": 2.0})
    meta["sampling"] = {"top_k": -1}
    (tmp_path / "progemu.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"progemu\.json: invalid \"sampling\" settings: top_k must be >= 0"):
        read_sampling_defaults(tmp_path)
    meta["sampling"] = {"cfg": 3}
    (tmp_path / "progemu.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"progemu\.json: unknown sampling setting\(s\) \['cfg'\]"):
        read_sampling_defaults(tmp_path)
    with pytest.raises(FileNotFoundError, match="no progemu.json"):
        write_sampling_defaults(tmp_path / "missing", {"top_k": 1})


@needs_demo
def test_the_pipeline_starts_from_the_saved_settings_and_keywords_override_them():
    from progemu import ProgEmuPipeline
    from progemu.generate.sampler import SamplingSettings

    pipe = ProgEmuPipeline.from_pretrained("demo", device="cpu")
    assert pipe.model_sampling == DEMO_SETTINGS
    for key, value in DEMO_SETTINGS.items():
        assert getattr(pipe.defaults, key) == value, key
    assert pipe.defaults.top_p == SamplingSettings().top_p  # not saved: the official default
    merged = pipe._settings({"cfg_scale": 1.0})
    assert (merged.cfg_scale, merged.temperature, merged.top_k) == (1.0, 0.7, 64)
    own = ProgEmuPipeline.from_pretrained(DEMO_MODEL_DIR, device="cpu", defaults=SamplingSettings())
    assert (own.defaults.cfg_scale, own.defaults.top_k) == (1.0, 2048)


@needs_demo
def test_generate_uses_the_models_settings_unless_a_flag_overrides_and_result_json_records_them(tmp_path):
    from PIL import Image

    from progemu.generate.cli import main

    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((96, 96)) * 255).astype(np.uint8)).save(tmp_path / "prior.png")
    out = tmp_path / "out"
    assert main(["--model", "demo", "--prior", str(tmp_path / "prior.png"), "--prompt", "New small left pleural effusion.",
                 "--out", str(out), "--max-text-tokens", "8", "--top-k", "32", "--no-attention", "--device", "cpu"]) == 0
    settings = json.loads((out / "result.json").read_text())["settings"]
    assert settings["cfg_scale"] == 3.0 and settings["temperature"] == 0.7 and settings["text_temperature"] == 0.0
    assert settings["top_k"] == 32 and settings["max_text_tokens"] == 8  # the flags win
    assert settings["checkpoint_sampling"] == DEMO_SETTINGS
    assert settings["model"] == str(DEMO_MODEL_DIR)


def test_the_web_page_starts_from_the_models_guidance_scale():
    pytest.importorskip("gradio")
    from progemu.serve.app import build_app

    class Pipe:
        model_sampling = {"cfg_scale": 2.5}

        def __call__(self, prior, prompt, samples=1, cfg_scale=None, seed=0):  # pragma: no cover - not called
            raise AssertionError

    page = build_app(Pipe())
    sliders = [block for block in page.blocks.values() if getattr(block, "elem_id", None) == "cfg"]
    assert [slider.value for slider in sliders] == [2.5]
    plain = build_app(lambda prior, prompt, samples=1, cfg_scale=None, seed=0: None)
    assert [b.value for b in plain.blocks.values() if getattr(b, "elem_id", None) == "cfg"] == [3.0]
