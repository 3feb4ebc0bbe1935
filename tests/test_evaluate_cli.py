"""`progemu evaluate` end to end on a tiny dataset, with generations in the documented cache format."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from evaluate_fixtures import one_torch_thread, make_tiny_dataset, train_tiny_evaluators  # noqa: F401 (autouse fixture)
from progemu.data.icgcxr import load_pairs
from progemu.evaluate.generations import Generation, GenerationCache
from progemu.evaluate.images import load_image
from progemu.evaluate.runner import EvaluateConfig, evaluate


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    data = make_tiny_dataset(root / "data")
    return data, train_tiny_evaluators(data, root / "evaluators", epochs=4)


def _fake_generation(pair, mix: float = 0.7) -> Generation:
    """A stand-in model: mostly the real follow-up, with the reference interpretation reworded."""
    image = mix * load_image(pair.followup_image) + (1 - mix) * load_image(pair.prior_image)
    phrase = pair.interpretation.split(",")[0]
    return Generation(pair.pair_id, [image], pair.interpretation.replace("There is", "We see"), phrases=[phrase],
                      attention={phrase: np.arange(16, dtype=np.float32).reshape(4, 4)})


def test_evaluate_cli_writes_the_output_contract(world, tmp_path, capsys):
    from progemu.cli import main

    data, evaluators = world
    cache = GenerationCache(tmp_path / "gen", "progemu")
    for pair in load_pairs(data, split="test"):
        cache.write(_fake_generation(pair))
    out = tmp_path / "out"
    rc = main(["evaluate", "--data", str(data), "--out", str(out), "--evaluators", str(evaluators),
               "--generations", str(tmp_path / "gen"), "--quiet", "--figure-pairs", "2"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["rows"]) == ["progemu", "copy-prior", "oracle"]
    for row in metrics["rows"].values():
        assert {"FID", "CLIP-I", "AUROC", "F1", "BLEU-3", "METEOR", "ROUGE-L"} <= set(row)
    assert metrics["n_pairs"] == 8 and metrics["evaluators"]["kind"] == "synthetic"
    oracle, copy, model = metrics["rows"]["oracle"], metrics["rows"]["copy-prior"], metrics["rows"]["progemu"]
    assert oracle["BLEU-3"] is None and oracle["METEOR"] is None and oracle["ROUGE-L"] is None and oracle["FID"] is None
    assert 0 <= model["METEOR"] <= 1 and 0 <= copy["ROUGE-L"] <= 1 and model["FID"] >= 0
    assert -100 <= model["CLIP-I"] <= 100
    assert set(metrics["changed_findings"]) == set(metrics["rows"]) and "AUROC" in metrics["changed_findings"]["progemu"]
    # the fixture changes one finding per pair; copy-prior moves nothing, the fake model moves towards the follow-up
    assert metrics["fidelity"]["copy-prior"] == 0.0
    assert metrics["rows"]["copy-prior"]["NCC-prior"] == pytest.approx(1.0)  # the prior kept exactly
    assert -1 <= metrics["rows"]["oracle"]["NCC-prior"] < 1
    assert metrics["fidelity_detail"]["progemu"]["classifier"]["n"] >= 8  # + "No Finding" flips
    assert set(metrics["per_finding"]["progemu"]) >= {"Pleural Effusion", "Cardiomegaly"}
    table = (out / "table.md").read_text()
    assert table.startswith("| method | FID↓") and "ProgEmu" in table and "copy-prior" in table
    page = (out / "report.html").read_text()
    assert page.index("<table>") < page.index("<img")  # opens with the metrics table, then figures
    assert (out / "figures" / "fig3_comparison.png").exists() and (out / "figures" / "fig4_progemu_0.png").exists()
    assert json.loads((out / "evaluate_config.json").read_text())["_kind"] == "EvaluateConfig"
    assert "ProgEmu" in capsys.readouterr().out


@dataclasses.dataclass
class _Result:
    counterfactuals: list
    interpretation: str
    phrases: list
    attention: dict


class _FakePipeline:
    """Implements the generation contract's ``generate_batch``; can fail after some calls (a killed run)."""

    def __init__(self, pairs_by_prompt, fail_after: int | None = None):
        self.calls, self.fail_after, self.pairs_by_prompt = [], fail_after, pairs_by_prompt

    def generate_batch(self, priors, prompts, samples=1, seed=0, attention=False):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt("killed")
        self.calls.append((list(prompts), list(seed), attention))
        results = []
        for prior, prompt in zip(priors, prompts):
            g = _fake_generation(self.pairs_by_prompt[prompt])
            results.append(_Result([g.counterfactuals[0]] * samples, g.interpretation, g.phrases, g.attention))
        return results


def test_generation_is_resumable_and_cached(world, tmp_path):
    data, evaluators = world
    pairs = load_pairs(data, split="test")
    by_prompt = {p.prompt: p for p in pairs}
    config = EvaluateConfig(data=str(data), out=str(tmp_path / "out"), evaluators=str(evaluators), batch_size=3,
                            meteor=False, max_pairs=6, figure_pairs=3)
    killed = _FakePipeline(by_prompt, fail_after=1)
    with pytest.raises(KeyboardInterrupt):
        evaluate(config, make_pipeline=lambda: killed, progress=False)
    cache = GenerationCache(tmp_path / "out" / "generations", "progemu")
    assert len(cache.records()) == 3  # the first batch survived the kill
    resumed = _FakePipeline(by_prompt)
    metrics = evaluate(config, make_pipeline=lambda: resumed, progress=False)
    assert killed.calls[0][1:] == ([0, 1, 2], True)  # attention only for the pairs shown in figures
    assert resumed.calls == [(resumed.calls[0][0], [3, 4, 5], False)]  # only the missing batch, same seeds
    assert metrics["n_pairs"] == 6 and metrics["rows"]["progemu"]["METEOR"] is None
    again = _FakePipeline(by_prompt)
    evaluate(config, make_pipeline=lambda: again, progress=False)
    assert again.calls == []  # everything read from the cache


def test_missing_generations_without_a_model_is_a_clear_error(world, tmp_path, capsys):
    from progemu.cli import main

    data, evaluators = world
    cache = GenerationCache(tmp_path / "gen", "progemu")
    cache.write(_fake_generation(load_pairs(data, split="test")[0]))
    rc = main(["evaluate", "--data", str(data), "--out", str(tmp_path / "out"), "--evaluators", str(evaluators),
               "--generations", str(tmp_path / "gen"), "--no-meteor", "--quiet"])
    assert rc == 1
    assert "7 of 8 pairs have no generation" in capsys.readouterr().err
    rc = main(["evaluate", "--data", str(data), "--out", str(tmp_path / "out2"), "--quiet"])
    assert rc == 1 and "--evaluators DIR" in capsys.readouterr().err


def test_generation_cache_round_trip(tmp_path):
    cache = GenerationCache(tmp_path, "progemu")
    maps = {"b": np.full((2, 3), 2.0, np.float32), "a": np.ones((2, 3), np.float32)}
    image = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    cache.write(Generation("src/p1/x", [image, 1 - image], "a then b then c", phrases=["a", "c", "b"], attention=maps))
    cache.write(Generation("src/p2/y", [image], None))
    back = cache.read("src/p1/x")
    assert back.phrases == ["a", "c", "b"] and set(back.attention) == {"a", "b"}
    np.testing.assert_array_equal(back.attention["b"], maps["b"])
    np.testing.assert_allclose(back.counterfactuals[1], 1 - image, atol=1 / 255)  # 8-bit PNG
    assert cache.read("src/p2/y").interpretation is None and cache.read("src/p2/y").attention == {}
    with pytest.raises(KeyError, match="no generation"):
        cache.read("src/p3/z")


def test_change_box_finds_the_change_and_ignores_registration_fill():
    from progemu.evaluate.figures import _square_box, change_box

    prior = np.full((100, 100), 0.5, np.float32)
    followup = prior.copy()
    followup[70:80, 10:20] = 0.9  # the change
    prior[:, :5] = 0.0  # black fill left by registration: larger difference, but not a change
    followup[:, :5] = 0.0
    prior[:8, :] = 0.0
    x0, y0, x1, y1 = change_box(prior, followup, fraction=0.2)
    assert x0 <= 10 and x1 >= 20 and y0 <= 70 and y1 >= 80 and x1 - x0 == 20
    assert _square_box((0.9, 0.9, 0.95, 0.95), 100) == (80, 80, 100, 100)  # clamped inside, minimum side 0.2
