"""The package skeleton: console script, shared atomic writes and configs, the ICG-CXR layout helpers."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from progemu.cli import COMMANDS, main
from progemu.data.icgcxr import Pair, load_pairs, pair_name, pair_relative_dir, write_manifest, write_pair
from progemu.utils.atomic import append_jsonl, atomic_save_png, atomic_write_json, read_jsonl
from progemu.utils.config import load_config, save_config


def test_cli_help_lists_every_design_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ["synth", "curate", "tokenizer", "tokenize", "train", "generate", "evaluate", "demo", "serve"]:
        assert command in out
    assert main(["no-such-command"]) == 2


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "progemu.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("progemu ")


def test_importing_cli_imports_no_stage():
    code = "import sys, progemu.cli; print(sorted(m for m in sys.modules if m.startswith('progemu.') and m.count('.')>=1))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "torch" not in out and eval(out) == ["progemu.cli"]


def test_jsonl_survives_a_torn_last_line(tmp_path):
    path = tmp_path / "log.jsonl"
    append_jsonl(path, {"a": 1})
    append_jsonl(path, {"a": 2})
    with open(path, "a") as handle:
        handle.write('{"a": 3')  # a writer killed mid-line
    assert [r["a"] for r in read_jsonl(path)] == [1, 2]


def test_atomic_png_round_trip(tmp_path):
    image = np.linspace(0, 1, 64 * 32, dtype=np.float32).reshape(32, 64)
    path = atomic_save_png(tmp_path / "x.png", image)
    from PIL import Image

    back = np.asarray(Image.open(path), dtype=np.float32) / 255
    assert back.shape == (32, 64)
    assert np.abs(back - image).max() <= 0.5 / 255 + 1e-6
    assert not list(tmp_path.glob(".*tmp"))


@dataclasses.dataclass
class _Inner:
    k: int = 3


@dataclasses.dataclass
class _Outer:
    name: str = "x"
    inner: _Inner = dataclasses.field(default_factory=_Inner)
    sizes: tuple = (1, 2)


def test_config_round_trip_and_unknown_key(tmp_path):
    config = _Outer(name="y", inner=_Inner(k=7), sizes=(4, 5))
    path = save_config(config, tmp_path / "c.json")
    assert load_config(_Outer, path) == config
    data = json.loads(path.read_text())
    data["typo"] = 1
    atomic_write_json(path, data)
    with pytest.raises(ValueError, match="typo"):
        load_config(_Outer, path)


def _pair_json(subject: str, prior_study: str, follow_study: str, split: str) -> dict:
    return {
        "progression-description": "New small left pleural effusion.",
        "changes-of-findings": "The left costophrenic angle is newly blunted.",
        "comment": {"confidence": 5, "reason": "clear"},
        "time-interval": 12.5,
        "subject-id": subject,
        "reference-study-id": prior_study,
        "followup-study-id": follow_study,
        "reference-study-order": 1,
        "followup-study-order": 2,
        "reference-diseases": {"Pleural Effusion": 0.0},
        "followup-diseases": {"Pleural Effusion": 1.0},
        "split": split,
    }


def test_official_layout_written_and_loaded_with_and_without_manifest(tmp_path):
    image = np.full((16, 16), 0.5, np.float32)
    json_path = write_pair(tmp_path, _pair_json("10000032", "50414267", "53189527", "train"), image, image, source="mimic_cxr")
    assert json_path.relative_to(tmp_path).as_posix() == (
        "mimic_cxr/pa/1/p10/p10000032/i01s50414267-i02s53189527/i01s50414267-i02s53189527.json"
    )
    assert json_path.with_name("i01s50414267-i02s53189527-ref-reg.png").exists()
    write_pair(tmp_path, _pair_json("00023", "0001", "0002", "test"), image, image, source="chexpertplus", split="test")
    pairs = load_pairs(tmp_path)  # no manifest: scan like the official release
    assert len(pairs) == 2
    mimic = [p for p in pairs if p.source == "mimic_cxr"][0]
    assert mimic.prompt.startswith("New small") and mimic.confidence == 5 and mimic.time_interval_days == 12.5
    assert mimic.followup_labels["Pleural Effusion"] == 1.0 and mimic.followup_labels["Edema"] is None
    write_manifest(tmp_path, pairs)
    again = load_pairs(tmp_path)
    assert [p.pair_id for p in again] == [p.pair_id for p in pairs]
    assert [p.pair_id for p in load_pairs(tmp_path, split="test")] == [p.pair_id for p in pairs if p.split == "test"]
    assert pair_name(3, "s", 14, "t") == "i03ss-i14st"
    assert pair_relative_dir("chexpertplus", "00023", "n", "train").as_posix() == "chexpertplus/pa/1/train/p00023/n"


def test_load_pairs_names_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="progemu curate"):
        load_pairs(tmp_path / "nope")


def test_loaded_pair_paths_are_absolute_even_for_a_relative_root(tmp_path, monkeypatch):
    image = np.full((8, 8), 0.25, np.float32)
    write_pair(tmp_path / "ds", _pair_json("10000032", "1", "2", "train"), image, image, source="mimic_cxr")
    monkeypatch.chdir(tmp_path)
    (pair,) = load_pairs("ds")
    assert pair.prior_image.is_absolute() and pair.prior_image.exists()
    assert pair.prior_image.relative_to(tmp_path / "ds").as_posix().startswith("mimic_cxr/pa/1/p10/")
