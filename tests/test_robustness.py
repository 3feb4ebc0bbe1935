"""Expected failures end in one clear line, never a traceback or a silently wrong run.

The command-line half of the robustness suite: flag validation at parse time, output paths,
devices and cheap input checks before any work, one writer per output folder, the top-level
handler (Ctrl-C, full disk, read-only output, a closed stdout pipe, ``--debug``), and help
texts that show every default. Stage outputs keyed by what made them are in
``test_robustness_stages.py``.
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_helpers import assert_one_line_error, run_cli, run_process, write_tiny_png

HAS_CUDA = False
try:  # torch is a base dependency, but keep collection cheap and robust
    import torch

    HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    pass


@pytest.fixture
def folders(tmp_path):
    """An empty input folder, a plain file and a fresh output path."""
    data = tmp_path / "data"
    data.mkdir()
    afile = tmp_path / "a-file"
    afile.write_text("not a folder")
    return data, afile, tmp_path / "out"


# ---- flags validated where they are parsed -------------------------------------------------------

BAD_FLAGS = [
    # (command line after `progemu`, the flag the message must name)
    (["train", "--max-steps", "0"], "--max-steps"),
    (["train", "--batch-size", "0"], "--batch-size"),
    (["train", "--epochs", "-1"], "--epochs"),
    (["train", "--save-every", "0"], "--save-every"),
    (["train", "--prompt-dropout", "1.5"], "--prompt-dropout"),
    (["train", "--lr", "0"], "--lr"),
    (["curate", "--limit-patients", "0"], "--limit-patients"),
    (["curate", "--limit-patients", "-3"], "--limit-patients"),
    (["curate", "--max-days", "-1"], "--max-days"),
    (["curate", "--image-size", "8"], "--image-size"),
    (["curate", "--workers", "0"], "--workers"),
    (["curate", "--test-fraction", "1"], "--test-fraction"),
    (["evaluate", "--max-pairs", "-12"], "--max-pairs"),
    (["evaluate", "--samples", "0"], "--samples"),
    (["evaluate", "--batch-size", "0"], "--batch-size"),
    (["evaluate", "--cfg", "nan"], "--cfg"),
    (["evaluate", "train-evaluators", "--clip-image-size", "50"], "--clip-image-size"),
    (["tokenizer", "train", "--codebook-size", "0"], "--codebook-size"),
    (["tokenizer", "train", "--max-steps", "0"], "--max-steps"),
    (["tokenizer", "train", "--batch-size", "0"], "--batch-size"),
    (["tokenizer", "eval", "--batch-size", "-2"], "--batch-size"),
    (["tokenize", "--batch-size", "0"], "--batch-size"),
    (["generate", "--samples", "0"], "--samples"),
    (["generate", "--top-p", "0"], "--top-p"),
    (["generate", "--temperature", "-1"], "--temperature"),
    (["generate", "--max-text-tokens", "0"], "--max-text-tokens"),
    (["generate", "--attention-layers", "1,x"], "--attention-layers"),
    (["synth", "--patients", "0"], "--patients"),
    (["demo", "--patients", "0"], "--patients"),
    (["demo", "--train-steps", "0"], "--train-steps"),
    (["demo", "--max-eval-pairs", "0"], "--max-eval-pairs"),
    (["serve", "--max-samples", "0"], "--max-samples"),
    (["serve", "--port", "70000"], "--port"),
]

_REQUIRED = {  # the required options of each command, so that only the bad flag is wrong
    "train": ["--data", "D", "--tokenizer", "T", "--out", "O"],
    "curate": ["--mimic", "M", "--out", "O"],
    "evaluate": ["--data", "D", "--out", "O"],
    "evaluate train-evaluators": ["--data", "D", "--out", "O"],
    "tokenizer train": ["--data", "D", "--out", "O"],
    "tokenizer eval": ["--tokenizer", "T", "--data", "D"],
    "tokenize": ["--data", "D", "--tokenizer", "T"],
    "generate": ["--model", "M", "--prior", "P", "--prompt", "x", "--out", "O"],
    "synth": ["--out", "O"],
    "demo": ["--out", "O"],
    "serve": ["--model", "M"],
}


@pytest.mark.parametrize("argv, flag", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_a_bad_flag_value_is_refused_while_parsing_and_named(argv, flag, tmp_path):
    command = " ".join(argv[:2]) if " ".join(argv[:2]) in _REQUIRED else argv[0]
    required = [str(tmp_path / a) if len(a) == 1 and a.isupper() else a for a in _REQUIRED[command]]
    result = run_cli([*command.split(), *required, *argv[len(command.split()):]])
    line = assert_one_line_error(result, flag, code=2)
    assert "--help" in line
    assert not any(tmp_path.iterdir()), "nothing may be written for a refused command line"


def _all_parsers() -> dict[str, argparse.ArgumentParser]:
    from progemu.curate.cli import build_parser as curate
    from progemu.demo import build_parser as demo
    from progemu.evaluate.cli import _evaluate_parser, _train_parser
    from progemu.generate.cli import build_parser as generate
    from progemu.serve.cli import build_parser as serve
    from progemu.synth.cli import build_parser as synth
    from progemu.tokenizer.cache_cli import build_parser as tokenize
    from progemu.tokenizer.cli import build_parser as tokenizer
    from progemu.train.cli import build_parser as train

    parsers = {}
    for make in (synth, curate, tokenizer, tokenize, train, generate, _evaluate_parser, _train_parser, demo, serve):
        parser = make()
        parsers[parser.prog] = parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.update({sub.prog: sub for sub in action.choices.values()})
    return parsers


def test_every_option_has_help_that_shows_its_default():
    parsers = _all_parsers()
    assert len(parsers) == 12  # every command and sub-command
    problems = []
    for prog, parser in parsers.items():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS \
                    or isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            text = formatter._get_help_string(action) if action.help else ""
            if not text.strip():
                problems.append(f"{prog} {action.option_strings[-1]}: no help")
            elif action.default not in (None, False, [], argparse.SUPPRESS) and "default" not in text.lower():
                problems.append(f"{prog} {action.option_strings[-1]}: default {action.default!r} not shown")
    assert problems == []
    help_text = parsers["progemu train"].format_help()
    assert "--warmup-steps WARMUP_STEPS" in help_text and "(default: 30)" in help_text


# ---- output paths, devices and inputs are checked before any work -------------------------------

@pytest.mark.parametrize("command", ["train", "curate", "evaluate", "synth", "demo", "tokenizer train", "generate"])
def test_out_that_is_a_file_is_refused_before_work(command, folders, tmp_path):
    data, afile, _ = folders
    extra = {
        "train": ["--data", data, "--tokenizer", data],
        "curate": ["--mimic", data],
        "evaluate": ["--data", data],
        "tokenizer train": ["--data", data],
        "generate": ["--model", data, "--prior", data / "p.png", "--prompt", "x"],
    }.get(command, [])
    result = run_cli([*command.split(), *extra, "--out", afile])
    assert_one_line_error(result, "--out", str(afile), "is a file", code=2)
    assert afile.read_text() == "not a folder"


def test_tokenizer_crop_size_must_fit_the_architecture(folders):
    data, _, out = folders
    line = assert_one_line_error(run_cli(["tokenizer", "train", "--data", data, "--out", out, "--crop-size", "7"]),
                                 "--crop-size 7", "multiple of", code=2)
    assert "0 (whole images)" in line and not out.exists()


def test_tokenizer_eval_out_that_is_a_folder_is_refused_before_the_evaluation(folders, tmp_path):
    data, _, out = folders
    out.mkdir()
    result = run_cli(["tokenizer", "eval", "--tokenizer", data, "--data", data, "--out", out])
    assert_one_line_error(result, "--out", "is a folder", code=2)


@pytest.mark.skipif(HAS_CUDA, reason="needs a machine without a CUDA GPU")
@pytest.mark.parametrize("command", ["train", "evaluate", "tokenize", "tokenizer train", "generate"])
def test_cuda_without_a_gpu_is_refused_before_work(command, folders, tmp_path):
    data, _, out = folders
    argv = {
        "train": ["train", "--data", data, "--tokenizer", data, "--out", out],
        "evaluate": ["evaluate", "--data", data, "--out", out],
        "tokenize": ["tokenize", "--data", data, "--tokenizer", data],
        "tokenizer train": ["tokenizer", "train", "--data", data, "--out", out],
        "generate": ["generate", "--model", data, "--prior", data / "p.png", "--prompt", "x", "--out", out],
    }[command]
    result = run_cli([*argv, "--device", "cuda"])
    assert_one_line_error(result, "--device cuda", "no CUDA GPU", code=2)


def test_missing_input_folders_are_named(folders):
    data, _, out = folders
    missing = data / "missing"
    assert_one_line_error(run_cli(["curate", "--mimic", missing, "--out", out]), "--mimic", "not found", code=2)
    assert_one_line_error(run_cli(["train", "--data", missing, "--tokenizer", data, "--out", out]), str(missing),
                          "not found", code=1)
    assert_one_line_error(run_cli(["evaluate", "--data", missing, "--out", out]), "--data", "not found", code=2)
    assert_one_line_error(run_cli(["tokenize", "--data", missing, "--tokenizer", data]), "--data", code=2)


@pytest.fixture
def fake_checkpoint(tmp_path):
    """A checkpoint folder with only ``config.json``: enough for every check made before a model loads
    (loading it would fail, which proves the checks come first)."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"num_hidden_layers": 2, "num_attention_heads": 4}))
    return model


def _generate(model, prior, out, *extra, prompt="New small left pleural effusion."):
    return run_cli(["generate", "--model", model, "--prior", prior, "--prompt", prompt, "--out", out, "--device", "cpu",
                    *extra])


def test_generate_checks_attention_layers_prompt_and_prior_before_loading_the_model(fake_checkpoint, tmp_path):
    prior, out = write_tiny_png(tmp_path / "prior.png"), tmp_path / "out"
    line = assert_one_line_error(_generate(fake_checkpoint, prior, out, "--attention-layers", "99"),
                                 "--attention-layers", "99", code=2)
    assert "2" in line  # the model's layer count
    assert_one_line_error(_generate(fake_checkpoint, prior, out, "--attention-heads", "-5"), "--attention-heads", code=2)
    assert_one_line_error(_generate(fake_checkpoint, prior, out, prompt="   "), "--prompt", "empty", code=2)
    assert_one_line_error(_generate(fake_checkpoint, tmp_path / "nope.png", out), "--prior", "not found", code=2)
    (tmp_path / "text.png").write_text("hello")
    assert_one_line_error(_generate(fake_checkpoint, tmp_path / "text.png", out), "--prior", "text.png", code=2)
    # the web page's radiograph plausibility checks
    colour = write_tiny_png(tmp_path / "photo.png", colour=True)
    assert_one_line_error(_generate(fake_checkpoint, colour, out), "--prior", "colour", "--skip-prior-checks", code=2)
    blank = write_tiny_png(tmp_path / "blank.png", blank=True)
    assert_one_line_error(_generate(fake_checkpoint, blank, out), "--prior", "blank", code=2)
    tiny = write_tiny_png(tmp_path / "tiny.png", size=4)
    assert_one_line_error(_generate(fake_checkpoint, tiny, out), "--prior", "4 x 4", code=2)
    # a plausible prior passes every check and reaches the model loader, which names what is missing
    assert_one_line_error(_generate(fake_checkpoint, prior, out), "progemu.json", code=2)
    # --skip-prior-checks lets an implausible (but readable) prior through to the same point
    assert_one_line_error(_generate(fake_checkpoint, colour, out, "--skip-prior-checks"), "progemu.json", code=2)
    assert not out.exists() or not any(p for p in out.iterdir() if p.name != ".progemu.lock")


def test_generate_reports_a_truncated_checkpoint_in_one_line(tmp_path):
    from generate_fixtures import tiny_checkpoint, tiny_image_tokenizer, write_prior_png

    model = tiny_checkpoint(tmp_path / "joint", "joint", seed=0, image_tokenizer=tiny_image_tokenizer())
    weights = model / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    result = _generate(model, write_prior_png(tmp_path / "prior.png", size=(40, 48)), tmp_path / "out")
    assert_one_line_error(result, "--model", str(model), "could not be loaded", "damaged", code=2)


def test_generate_refuses_an_invalid_config_json(fake_checkpoint, tmp_path):
    (fake_checkpoint / "config.json").write_text("{not json")
    result = _generate(fake_checkpoint, write_tiny_png(tmp_path / "prior.png"), tmp_path / "out")
    assert_one_line_error(result, "config.json", "not valid JSON", code=2)


def test_reusing_a_generate_out_removes_the_previous_results_extra_files(tmp_path):
    from progemu.generate.cli import _stale_outputs

    out = tmp_path / "out"
    (out / "attention").mkdir(parents=True)
    for name in ("counterfactual_0.png", "counterfactual_1.png", "counterfactual_2.png", "spread.png",
                 "difference.png", "attention/00_old.png", "attention/01_kept.png", "interpretation.txt"):
        (out / name).write_bytes(b"x")
    document = {"counterfactuals": ["counterfactual.png"], "difference": "difference.png", "spread": None,
                "attention": {"kept": {"png": "attention/01_kept.png"}}}
    (out / "counterfactual.png").write_bytes(b"new")
    stale = sorted(p.relative_to(out).as_posix() for p in _stale_outputs(out, document))
    assert stale == ["attention/00_old.png", "counterfactual_0.png", "counterfactual_1.png", "counterfactual_2.png",
                     "spread.png"]


# ---- one writer per output folder ------------------------------------------------------------------

def test_a_second_writer_of_the_same_out_is_refused_and_a_killed_holder_frees_it(folders, tmp_path):
    data, _, out = folders
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from progemu.utils.lock import output_lock\n"
                               f"with output_lock({str(out)!r}, 'progemu curate'):\n"
                               "    print('locked', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = run_cli(["curate", "--mimic", data, "--out", out])
        assert_one_line_error(result, "--out", str(out), "another progemu process is writing", code=1)
        result = run_cli(["evaluate", "--data", data, "--out", out])
        assert_one_line_error(result, "--out", "another progemu process", code=1)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    from progemu.utils.lock import output_lock

    with output_lock(out):  # the kernel released the dead holder's lock: no stale lock file blocks
        pass


def test_the_lock_refuses_a_second_holder_in_one_process(tmp_path):
    from progemu.utils.lock import OutputLockedError, output_lock

    with output_lock(tmp_path / "out", "progemu train"):
        with pytest.raises(OutputLockedError, match="another progemu process is writing this folder"):
            with output_lock(tmp_path / "out", "progemu train"):
                pass
    with output_lock(tmp_path / "out"):
        pass
    assert (tmp_path / "out" / ".progemu.lock").read_bytes() == b""  # outputs stay byte-identical


# ---- the top-level handler -------------------------------------------------------------------------

class _Failing:
    """A stand-in stage module whose ``main`` raises ``error``."""

    def __init__(self, error):
        self.error = error

    def main(self, argv):
        raise self.error


@pytest.fixture
def failing_stage(monkeypatch):
    import importlib

    def install(error):
        real = importlib.import_module

        def fake(name, *args, **kwargs):
            return _Failing(error) if name == "progemu.synth.cli" else real(name, *args, **kwargs)

        monkeypatch.setattr("progemu.cli.importlib.import_module", fake)

    return install


@pytest.mark.parametrize("error, code, words", [
    (KeyboardInterrupt(), 130, ["interrupted", "run the same command again"]),
    (OSError(errno.ENOSPC, "No space left on device", "/data/out/x.png"), 1, ["/data/out/x.png", "no space left"]),
    (OSError(errno.EROFS, "Read-only file system", "/ro/out"), 1, ["/ro/out", "cannot write", "writable --out"]),
    (PermissionError(errno.EACCES, "Permission denied", "/root/out"), 1, ["/root/out", "cannot write"]),
    (ValueError("data.json: broken"), 1, ["data.json: broken", "--debug"]),
    (RuntimeError("a\nmulti-line\nmessage"), 1, ["a multi-line message"]),
    (ZeroDivisionError("bug"), 1, ["unexpected error", "ZeroDivisionError", "--debug"]),
])
def test_expected_failures_end_in_one_line_without_traceback(failing_stage, error, code, words):
    failing_stage(error)
    result = run_cli(["synth", "--out", "x"])
    line = assert_one_line_error(result, "progemu synth", *words, code=code)
    assert len(line) < 700


def test_debug_lets_the_traceback_through(failing_stage):
    failing_stage(ValueError("boom"))
    with pytest.raises(ValueError, match="boom"):
        run_cli(["synth", "--out", "x", "--debug"])


def test_a_real_interrupt_and_an_unreadable_flag_in_a_process_print_no_traceback(tmp_path):
    result = run_process(["train", "--data", tmp_path, "--tokenizer", tmp_path, "--out", tmp_path / "o",
                          "--batch-size", "0"])
    assert_one_line_error(result, "--batch-size", code=2)
    # SIGINT while the synthetic world is being written: one line, exit 130, the world resumes later
    child = subprocess.Popen([sys.executable, "-m", "progemu.cli", "synth", "--out", str(tmp_path / "w"),
                              "--patients", "400", "--image-size", "64", "--quiet"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.time() + 60
    while time.time() < deadline and not (tmp_path / "w" / "synth_config.json").exists():
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=60)
    if child.returncode == 0:
        pytest.skip("the world finished before the interrupt arrived")
    assert child.returncode == 130 and "Traceback" not in err
    assert [line for line in err.splitlines() if line.strip()] == [
        "progemu synth: interrupted; finished work is kept, run the same command again to continue"]
    assert not (tmp_path / "w" / "synth_done.json").exists()


def test_a_closed_stdout_pipe_ends_quietly(tmp_path):
    child = subprocess.Popen([sys.executable, "-m", "progemu.cli", "train", "--help"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=dict(os.environ, OMP_NUM_THREADS="1"))
    child.stdout.close()  # the reader went away (`progemu train --help | head -0`)
    err = child.stderr.read().decode()
    child.wait(timeout=60)
    assert "Traceback" not in err and "BrokenPipeError" not in err and err.strip() == ""
    shell = subprocess.run(f"{sys.executable} -m progemu.cli --help | head -3", shell=True, capture_output=True,
                           text=True, timeout=60)
    assert shell.stderr == "" and len(shell.stdout.splitlines()) == 3


def test_describe_os_error_names_the_path_and_what_to_do():
    from progemu.utils.checks import describe_os_error

    assert "no space left" in describe_os_error(OSError(errno.ENOSPC, "x"), "/d/f.png")
    assert describe_os_error(OSError(errno.EROFS, "x", "/ro")).startswith("/ro: cannot write here")
