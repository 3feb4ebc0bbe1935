"""The README's commands, taken from README.md itself and run as written.

The "Stage by stage" shell block runs command by command in an empty folder (with this
environment's ``progemu`` first on PATH, as after ``. .venv/bin/activate``); ``progemu serve`` is
started, must answer on its URL, and is stopped with SIGTERM; the Python API block runs in the
same folder. So the README and the commands cannot drift apart. Minutes on 2 cores: slow.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent


def _section(text: str, title: str) -> str:
    start = text.index(f"## {title}\n")
    following = re.search(r"^## ", text[start + 3:], flags=re.M)
    return text[start:start + 3 + following.start()] if following else text[start:]


def _blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.M | re.S)


def shell_commands(block: str) -> list[str]:
    """The commands of a shell block: comments and blank lines dropped, ``\\`` continuations joined."""
    commands, current = [], ""
    for line in block.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1].rstrip() + " "
            continue
        commands.append(current + stripped)
        current = ""
    assert not current, f"README block ends inside a continued command: {current!r}"
    return commands


def stage_block() -> list[str]:
    (block,) = _blocks(_section(README.read_text(encoding="utf-8"), "Stage by stage"), "bash")
    return shell_commands(block)


def python_blocks() -> list[str]:
    """The Python API block, then the one that saves sampling settings with a model."""
    blocks = _blocks(_section(README.read_text(encoding="utf-8"), "Stage by stage"), "python")
    assert len(blocks) == 2, "README 'Stage by stage' should hold the Python API and the sampling-settings blocks"
    return blocks


def test_readme_says_how_to_get_the_command_and_where_the_demo_weights_are():
    text = README.read_text(encoding="utf-8")
    assert ". .venv/bin/activate" in text
    assert "pip install 'progemu[serve]'" in text
    assert "--model demo" in text and 'from_pretrained("demo")' in text
    assert "copy-prior image + retrieved interpretation" in text


@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "activate").exists(), reason="no .venv in this checkout (make demo makes it)")
def test_activating_the_environment_puts_progemu_on_path():
    (_, activate) = _blocks(_section(README.read_text(encoding="utf-8"), "The two commands"), "bash")
    commands = shell_commands(activate)
    assert commands[0].startswith(". .venv/bin/activate")
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH"}}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"  # no progemu before activation
    done = subprocess.run(["bash", "-e", "-c", "\n".join(commands)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: progemu COMMAND")


def test_stage_block_covers_every_stage_in_order():
    commands = stage_block()
    firsts = [" ".join(c.split()[:2]) for c in commands if c.startswith("progemu ")]
    expected = ["progemu synth", "progemu curate", "progemu tokenizer", "progemu tokenizer", "progemu tokenize",
                "progemu train", "progemu generate", "progemu generate", "progemu evaluate", "progemu evaluate",
                "progemu serve"]
    assert firsts == expected
    assert commands[-1].startswith("progemu serve"), "serve blocks: it must be the block's last command"
    assert shell_commands("a \\\n  --b c\n# note\n\nd\n") == ["a --b c", "d"]


def _free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


def _port_busy(port: int) -> bool:
    with socket.socket() as handle:
        return handle.connect_ex(("127.0.0.1", port)) == 0


def _serve(command: str, cwd: Path, env: dict, log: list[str]) -> None:
    """Start the README's serve command, wait for its URL to answer, stop it with SIGTERM."""
    import importlib.util

    if importlib.util.find_spec("gradio") is None:  # the serve extra is not installed (make test installs it)
        log.append(f"{command}: not run, gradio is not installed")
        return
    if _port_busy(7860):  # another server holds the README's port on this machine: same command, other port
        command += f" --port {_free_port()}"
    process = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=cwd, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    url, lines = None, []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and url is None:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            found = re.search(r"open (http://\S+) in a browser", line)
            url = found.group(1) if found else None
        assert url, f"`{command}` printed no URL:\n{''.join(lines)[-3000:]}"
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.status == 200 and b"ProgEmu" in response.read()
        log.append(f"{command}: answered on {url}")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:  # pragma: no cover - a hung server must not hang the suite
            process.kill()
            process.wait()
    assert process.returncode == 0, f"`{command}` ended with {process.returncode} after SIGTERM"


@pytest.mark.slow
def test_stage_by_stage_block_and_python_api_run_as_written(tmp_path):
    work = tmp_path / "try"
    work.mkdir()
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)
    old_umask = os.umask(0o022)
    log: list[str] = []
    try:
        for command in stage_block():
            if command.startswith("progemu serve"):
                _serve(command, work, env, log)
                continue
            started = time.perf_counter()
            done = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=work, env=env, capture_output=True,
                                  text=True, timeout=600)
            log.append(f"{time.perf_counter() - started:6.1f} s  {command}")
            assert done.returncode == 0, (f"README command failed ({done.returncode}): {command}\n"
                                          f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
        outputs = []
        for number, block in enumerate(python_blocks(), 1):
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", block], cwd=work, env=env, capture_output=True, text=True,
                                  timeout=600)
            log.append(f"{time.perf_counter() - started:6.1f} s  README Python block {number}")
            assert done.returncode == 0, f"README Python block {number} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
            outputs.append(done.stdout)
    finally:
        os.umask(old_umask)
        print("\n".join(log))

    # what the block promises
    result = json.loads((work / "result" / "result.json").read_text())
    assert result["prompt"] == "New small left pleural effusion."
    assert (work / "result" / "counterfactual.png").is_file() and (work / "result" / "interpretation.txt").is_file()
    demo = json.loads((work / "result-demo" / "result.json").read_text())["settings"]
    assert {k: demo[k] for k in ("cfg_scale", "temperature", "top_k", "text_temperature")} == \
        {"cfg_scale": 3.0, "temperature": 0.7, "top_k": 64, "text_temperature": 0.0}
    table = (work / "eval" / "table.md").read_text()
    assert "| copy-prior image + retrieved interpretation (reference) |" in table
    assert (work / "eval" / "report.html").is_file()
    # the Python API wrote its result and printed the settings it used (a model without saved settings)
    assert (work / "result-api" / "result.json").is_file()
    assert outputs[0].strip().splitlines()[-1] == "1.0 1.0"
    # ... and the second block saved sampling settings with that model
    assert json.loads((work / "model" / "progemu.json").read_text())["sampling"] == \
        {"cfg_scale": 3.0, "temperature": 0.7, "top_k": 64}
    # every output is readable by others under umask 022 (weights included)
    for path in [work / "model" / "model.safetensors", work / "tok" / "model.safetensors", work / "eval" / "metrics.json",
                 work / "eval" / "report.html", work / "result" / "result.json", work / "evaluators" / "evaluators.json"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
