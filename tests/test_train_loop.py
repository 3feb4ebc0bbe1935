"""`progemu train` end to end on CPU: overfitting, resume after SIGKILL, 2-process DDP, reloadable checkpoints."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from progemu.utils.atomic import read_jsonl

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from train_fixtures import make_dataset, make_image_tokenizer

    root = tmp_path_factory.mktemp("train_loop")
    data = make_dataset(root / "data", n_pairs=8)
    tokenizer = make_image_tokenizer(root / "tok")
    # cache the codes once, so that runs in subprocesses only read them
    from progemu.data.icgcxr import load_pairs
    from progemu.tokenizer.vqvae import ImageTokenizer
    from progemu.train.data import load_codes

    load_codes(data, load_pairs(data), ImageTokenizer.from_pretrained(tokenizer), progress=False)
    return {"root": root, "data": data, "tokenizer": tokenizer}


def _args(world, out, *extra):
    return ["--data", str(world["data"]), "--tokenizer", str(world["tokenizer"]), "--out", str(out), "--threads", "1",
            "--no-progress", *extra]


def _losses(out) -> list[float]:
    return [r["loss"] for r in read_jsonl(Path(out) / "log.jsonl")]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    env.pop("WORLD_SIZE", None)
    return env


@pytest.mark.slow
def test_tiny_model_overfits_a_few_pairs(world, tmp_path):
    from train_fixtures import make_dataset

    from progemu.train.cli import main

    data = make_dataset(tmp_path / "four", n_pairs=4)  # the whole dataset is one batch
    out = tmp_path / "overfit"
    args = ["--data", str(data), "--tokenizer", str(world["tokenizer"]), "--out", str(out), "--threads", "1", "--no-progress",
            "--max-steps", "100", "--batch-size", "4", "--lr", "3e-3", "--warmup-steps", "5", "--weight-decay", "0",
            "--prompt-dropout", "0", "--sentence-shuffle", "0", "--save-every", "1000"]
    assert main(args) == 0
    losses = _losses(out)
    records = read_jsonl(out / "log.jsonl")
    assert len(losses) == 100
    assert {"step", "loss", "lr", "tokens_per_s"} <= set(records[0])
    assert losses[0] > 5.0  # ~ln(vocab) at initialisation
    # measured: 5.89 -> ~0.1 at step 100 (a phase transition around step 50-80)
    assert np.mean(losses[-5:]) < 1.0
    assert records[-1]["loss_text"] < 1.0 and records[-1]["loss_image"] < 1.0
    assert records[-1]["lr"] < records[10]["lr"]  # cosine decay after warm-up
    # teacher-forced loss of the saved checkpoint reproduces the training loss; without the
    # condition (never trained: --prompt-dropout 0) the model cannot tell the pairs apart
    from progemu.data.icgcxr import load_pairs
    from progemu.model.checkpoint import load_checkpoint
    from progemu.train.data import load_codes
    from progemu.train.validate import heldout_loss

    loaded = load_checkpoint(out)
    pairs = load_pairs(data)
    scores = heldout_loss(loaded, pairs, load_codes(data, pairs, loaded.image_tokenizer, progress=False))
    assert scores["conditional"]["loss"] < 1.0
    assert scores["null"]["loss"] > scores["conditional"]["loss"] + 1.0


def test_checkpoint_reloads_with_transformers_alone(world, tmp_path):
    from progemu.train.cli import main

    out = tmp_path / "ckpt"
    assert main(_args(world, out, "--max-steps", "2", "--batch-size", "4", "--save-every", "1", "--keep-last", "1")) == 0
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-0000002"]
    script = (
        "import sys, json, torch\n"
        "from transformers import AutoTokenizer, Emu3ForCausalLM\n"
        "model = Emu3ForCausalLM.from_pretrained(sys.argv[1]).eval()\n"
        "tok = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "layout = json.load(open(sys.argv[1] + '/progemu.json'))['layout']\n"
        "ids = tok.encode('<|extra_203|>New small left pleural effusion.', add_special_tokens=False)\n"
        "assert ids[0] == layout['bos_id'] and model.config.vocab_size == layout['visual_offset'] + layout['codebook_size']\n"
        "print(json.dumps(model(input_ids=torch.tensor([ids])).logits[0, -1, :5].tolist()))\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True, env=_env(), timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    from progemu.model.checkpoint import load_checkpoint

    loaded = load_checkpoint(out)
    ids = loaded.text_tokenizer.encode("<|extra_203|>New small left pleural effusion.", add_special_tokens=False)
    with torch.no_grad():
        ours = loaded.model(input_ids=torch.tensor([ids])).logits[0, -1, :5].tolist()
    np.testing.assert_allclose(json.loads(result.stdout.strip().splitlines()[-1]), ours, rtol=1e-5, atol=1e-6)
    assert loaded.mode == "joint" and loaded.image_tokenizer.grid == (8, 8)
    assert loaded.meta["train"]["step"] == 2
    # the step checkpoint is a complete checkpoint too
    assert load_checkpoint(out / "checkpoints" / "step-0000002", load_image_tokenizer=False).layout == loaded.layout


@pytest.mark.slow
def test_resume_after_sigkill_gives_the_same_loss_curve(world, tmp_path):
    from progemu.train.cli import main

    common = ["--max-steps", "12", "--batch-size", "4", "--save-every", "3", "--lr", "2e-3", "--warmup-steps", "3",
              "--prompt-dropout", "0.3", "--sentence-shuffle", "0.5"]
    reference = tmp_path / "reference"
    assert main(_args(world, reference, *common)) == 0
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "progemu.train.cli", *_args(world, killed, *common)],
                               env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if len(read_jsonl(killed / "log.jsonl")) >= 8:  # past the step-6 checkpoint, before the end
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "progemu.json").exists()
    assert main(_args(world, killed, *common, "--resume")) == 0
    assert _losses(killed) == _losses(reference)  # bit-identical: same data, weights, optimiser state
    assert [r["step"] for r in read_jsonl(killed / "log.jsonl")] == list(range(1, 13))


@pytest.mark.slow
@pytest.mark.parametrize("strategy,extra", [("ddp", ()), ("fsdp", ()),
                                            ("ddp", ("--positions", "aligned", "--identity-pairs", "0.3"))])
def test_two_processes_equal_one_process(world, tmp_path, strategy, extra):
    from progemu.train.cli import main

    common = ["--max-steps", "4", "--batch-size", "4", "--save-every", "1000", "--lr", "2e-3", "--warmup-steps", "1", *extra]
    single = tmp_path / "single"
    assert main(_args(world, single, *common)) == 0
    double = tmp_path / strategy
    port = {"ddp": "29517", "fsdp": "29518"}[strategy] if not extra else "29519"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
               "-m", "progemu.train.cli", *_args(world, double, *common, "--strategy", strategy)]
    result = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_allclose(_losses(double), _losses(single), rtol=2e-5)
    assert len(_losses(double)) == 4
    # rank 0 alone wrote the final checkpoint; its weights equal the single-process ones
    from safetensors.torch import load_file

    a, b = load_file(single / "model.safetensors"), load_file(double / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["image", "text"])
def test_cascade_modes_train_and_record_their_mode(world, tmp_path, mode):
    from progemu.model.checkpoint import read_meta
    from progemu.train.cli import main

    out = tmp_path / mode
    assert main(_args(world, out, "--mode", mode, "--max-steps", "2", "--batch-size", "4")) == 0
    record = read_jsonl(out / "log.jsonl")[-1]
    assert read_meta(out)["mode"] == mode
    if mode == "image":
        assert record["loss_text"] is not None  # BOI, "h*w", image token, EOL, EOF, EOI and EOS are text ids
    else:
        assert record["loss_image"] is None  # text mode has no visual targets


def test_init_from_a_progemu_checkpoint(world, tmp_path):
    """--init DIR fine-tunes a progemu checkpoint (here: a joint model into the text half of ProgEmu²)."""
    from safetensors.torch import load_file

    from progemu.model.checkpoint import read_meta
    from progemu.train.cli import main

    joint = tmp_path / "joint"
    assert main(_args(world, joint, "--max-steps", "1", "--batch-size", "4")) == 0
    text = tmp_path / "text"
    assert main(_args(world, text, "--max-steps", "1", "--batch-size", "4", "--mode", "text", "--init", str(joint), "--lr", "1e-30")) == 0
    assert read_meta(text)["layout"] == read_meta(joint)["layout"] and read_meta(text)["mode"] == "text"
    a, b = load_file(joint / "model.safetensors"), load_file(text / "model.safetensors")
    for key in a:  # lr 1e-30 (0 is refused): updates vanish below float32 resolution, the weights are the initial ones
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_gradient_checkpointing_and_accumulation_keep_the_loss(world, tmp_path):
    """Recomputing activations, or splitting the batch into micro-batches, must not change the numbers."""
    from progemu.train.cli import main

    common = ["--max-steps", "2", "--batch-size", "4", "--warmup-steps", "1", "--lr", "2e-3"]
    assert main(_args(world, tmp_path / "plain", *common)) == 0
    assert main(_args(world, tmp_path / "ckpt", *common, "--gradient-checkpointing", "on", "--micro-batch-size", "1")) == 0
    np.testing.assert_allclose(_losses(tmp_path / "ckpt"), _losses(tmp_path / "plain"), rtol=1e-5)


def test_visual_loss_weight_changes_the_update_not_the_logged_loss(world, tmp_path, capsys):
    """--visual-loss-weight scales image-code CE in the optimised loss only: same logged loss at step 1
    (same initial weights), a different last step, and the weight recorded beside the checkpoint."""
    from progemu.train.cli import main

    common = ["--max-steps", "3", "--batch-size", "4", "--warmup-steps", "1", "--lr", "5e-3", "--prompt-dropout", "0"]
    assert main(_args(world, tmp_path / "w1", *common)) == 0
    assert main(_args(world, tmp_path / "w025", *common, "--visual-loss-weight", "0.25")) == 0
    plain, weighted = read_jsonl(tmp_path / "w1" / "log.jsonl"), read_jsonl(tmp_path / "w025" / "log.jsonl")
    for key in ("loss", "loss_image", "loss_text"):
        assert weighted[0][key] == pytest.approx(plain[0][key], rel=1e-6), key
    assert abs(weighted[-1]["loss_text"] - plain[-1]["loss_text"]) > 1e-4  # the text got a larger share of the update
    recorded = json.loads((tmp_path / "w025" / "progemu.json").read_text())["train"]["data_config"]
    assert recorded["visual_loss_weight"] == 0.25
    with pytest.raises(SystemExit) as refused:  # refused while parsing, as every bad flag value
        main(_args(world, tmp_path / "bad", *common, "--visual-loss-weight", "-1"))
    assert refused.value.code == 2
    assert "--visual-loss-weight" in capsys.readouterr().err


def test_schedule_steps_stops_a_run_early_on_the_longer_schedule(world, tmp_path, capsys):
    """--max-steps 3 --schedule-steps 5 is exactly the first 3 steps of a 5-step run (same lr, same data order)."""
    from progemu.train.cli import main

    common = ["--batch-size", "4", "--warmup-steps", "1", "--lr", "5e-3", "--prompt-dropout", "0"]
    assert main(_args(world, tmp_path / "full", *common, "--max-steps", "5")) == 0
    assert main(_args(world, tmp_path / "early", *common, "--max-steps", "3", "--schedule-steps", "5")) == 0
    full, early = read_jsonl(tmp_path / "full" / "log.jsonl"), read_jsonl(tmp_path / "early" / "log.jsonl")
    assert len(early) == 3
    for a, b in zip(early, full[:3]):
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-12)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    assert main(_args(world, tmp_path / "plain3", *common, "--max-steps", "3")) == 0
    assert read_jsonl(tmp_path / "plain3" / "log.jsonl")[2]["lr"] != pytest.approx(early[2]["lr"], rel=1e-6)
    assert main(_args(world, tmp_path / "bad", *common, "--max-steps", "3", "--schedule-steps", "2")) == 1
    assert "shorter than the run" in capsys.readouterr().err


def test_refuses_to_overwrite_and_reports_bad_input(world, tmp_path, capsys):
    from progemu.train.cli import main

    out = tmp_path / "once"
    assert main(_args(world, out, "--max-steps", "1", "--batch-size", "4")) == 0
    assert main(_args(world, out, "--max-steps", "1", "--batch-size", "4")) == 1
    assert "--resume" in capsys.readouterr().err
    assert main(_args(world, tmp_path / "b", "--max-steps", "1", "--batch-size", "64")) == 1
    assert "fewer than one global batch" in capsys.readouterr().err
    assert main(["--data", str(tmp_path / "nope"), "--tokenizer", str(world["tokenizer"]), "--out", str(tmp_path / "c")]) == 1
    assert "dataset directory not found" in capsys.readouterr().err


def test_aligned_positions_and_identity_pairs_are_recorded_and_kept_on_resume(world, tmp_path, capsys):
    from progemu.model.checkpoint import load_checkpoint
    from progemu.train.cli import main

    out = tmp_path / "aligned"
    common = ["--max-steps", "2", "--batch-size", "4", "--save-every", "1", "--positions", "aligned", "--prompt-budget", "40",
              "--identity-pairs", "0.5"]
    assert main(_args(world, out, *common)) == 0
    loaded = load_checkpoint(out)
    assert loaded.layout.aligned and loaded.layout.prompt_budget == 40
    # the identity texts are known to the text tokenizer (trained with them), and recorded in the config
    meta = json.loads((out / "progemu.json").read_text())
    assert json.dumps(meta).count("identity_pairs") >= 1
    ids = loaded.text_tokenizer.encode("No interval change.", add_special_tokens=False)
    assert loaded.text_tokenizer.unk_token_id not in ids
    capsys.readouterr()
    sequential = [("sequential" if a == "aligned" else a) for a in common]
    assert main(_args(world, out, *sequential, "--max-steps", "3", "--resume")) != 0  # sequential != saved aligned
    assert "--positions" in capsys.readouterr().err


def test_identity_pairs_copy_the_prior_with_the_no_change_texts(world):
    from progemu.data.icgcxr import load_pairs
    from progemu.model.layout import TokenLayout
    from progemu.tokenizer.vqvae import ImageTokenizer
    from progemu.train.data import DataConfig, ProgEmuExamples, load_codes
    from generate_fixtures import TEXTS
    from progemu.model.text_tokenizer import train_text_tokenizer

    pairs = load_pairs(world["data"])
    tokenizer = ImageTokenizer.from_pretrained(world["tokenizer"])
    codes = load_codes(world["data"], pairs, tokenizer, progress=False)
    config = DataConfig(identity_pairs=0.5, prompt_dropout=0.0, sentence_shuffle=0.0)
    text = train_text_tokenizer(TEXTS + [config.identity_prompt, config.identity_interpretation],
                                codebook_size=tokenizer.codebook_size, vocab_size=300)
    layout = TokenLayout.from_tokenizer(text, tokenizer.grid, tokenizer.codebook_size)
    examples = ProgEmuExamples(pairs, codes, text, layout, config, seed=3)
    encode = lambda t: text.encode(t, add_special_tokens=False)  # noqa: E731
    identity, normal = 0, 0
    for index, pair in enumerate(pairs):
        prior, follow = codes[str(pair.prior_image)], codes[str(pair.followup_image)]
        as_identity = layout.build(prior, encode(config.identity_prompt), prior, encode(config.identity_interpretation))[0]
        as_pair = layout.build(prior, encode(pair.prompt), follow, encode(pair.interpretation))[0]
        for epoch in range(4):
            ids, _ = examples.example(index, epoch)
            assert ids == examples.example(index, epoch)[0]  # deterministic in (seed, epoch, index)
            assert ids in (as_identity, as_pair)
            identity += ids == as_identity
            normal += ids == as_pair
    assert identity > 0 and normal > 0
    assert abs(identity / (identity + normal) - 0.5) < 0.25


def test_prompt_only_dropout_keeps_the_prior_and_leaves_other_draws_alone(world):
    """Dual guidance's prior-only branch: prompt removed, prior image and target kept; its own random stream."""
    import dataclasses

    from progemu.data.icgcxr import load_pairs
    from progemu.model.layout import TokenLayout
    from progemu.model.text_tokenizer import train_text_tokenizer
    from progemu.tokenizer.vqvae import ImageTokenizer
    from progemu.train.data import DataConfig, ProgEmuExamples, load_codes
    from generate_fixtures import TEXTS

    pairs = load_pairs(world["data"])
    tokenizer = ImageTokenizer.from_pretrained(world["tokenizer"])
    codes = load_codes(world["data"], pairs, tokenizer, progress=False)
    base = DataConfig(prompt_dropout=0.2, sentence_shuffle=0.0)
    text = train_text_tokenizer(TEXTS, codebook_size=tokenizer.codebook_size, vocab_size=300)
    layout = TokenLayout.from_tokenizer(text, tokenizer.grid, tokenizer.codebook_size)
    plain = ProgEmuExamples(pairs, codes, text, layout, base, seed=5)
    dropped = ProgEmuExamples(pairs, codes, text, layout, dataclasses.replace(base, prompt_only_dropout=0.5), seed=5)
    encode = lambda t: text.encode(t, add_special_tokens=False)  # noqa: E731
    counts = {"prior_only": 0, "same": 0}
    for index, pair in enumerate(pairs):
        prior, follow = codes[str(pair.prior_image)], codes[str(pair.followup_image)]
        prior_only = layout.build(prior, [], follow, encode(pair.interpretation))
        for epoch in range(4):
            expected, got = plain.example(index, epoch), dropped.example(index, epoch)
            if got == expected:
                counts["same"] += 1
            else:
                assert got == prior_only  # a null (fully dropped) example is never changed
                counts["prior_only"] += 1
    total = sum(counts.values())
    assert counts["prior_only"] > 0 and abs(counts["prior_only"] / total - 0.5 * 0.8) < 0.2
