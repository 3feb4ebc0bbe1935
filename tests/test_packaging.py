"""Packaging: what pip reads, what each command checks at start-up, what the wheel holds.

- ``pyproject.toml`` is the one source of the torch / torchvision pins (the Makefile reads them)
  and declares every package of the main job in the base install; the extras table of
  :mod:`progemu.utils.extras` agrees with it;
- every command checks its packages before any work and names the extra to install;
- ``make demo`` installs only the main job's needs, ``make test`` the test-only system packages;
- outputs follow the umask (``utils.atomic``), the LICENSE is the Apache-2.0 text the metadata names;
- the wheel carries the dependencies, the licence and the demo weights with their sampling settings.
  Installing that wheel into a fresh virtual environment and running ``progemu demo`` downloads
  torch (~5 GB) and takes minutes: that test runs only with ``PROGEMU_TEST_WHEEL_INSTALL=1``.
"""
from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from progemu.cli import COMMANDS
from progemu.utils import extras
from progemu.utils.atomic import atomic_save_png, atomic_write_json, atomic_write_text, file_mode, match_umask

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")
ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _name(requirement: str) -> str:
    for stop in "<>=!~[ ;(":
        requirement = requirement.split(stop)[0]
    return requirement.strip().lower().replace("_", "-")


def _declared() -> dict[str | None, set[str]]:
    project = PYPROJECT["project"]
    declared: dict[str | None, set[str]] = {None: {_name(r) for r in project["dependencies"]}}
    for extra, requirements in project["optional-dependencies"].items():
        declared[extra] = {_name(r) for r in requirements}
    return declared


# ------------------------------------------------------------------------------------------ pyproject
def test_torch_pins_are_declared_once_in_pyproject_and_the_makefile_reads_them():
    dependencies = PYPROJECT["project"]["dependencies"]
    assert "torch==2.14.1" in dependencies and "torchvision==0.29.1" in dependencies
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert not re.search(r"torch(vision)?==\d", makefile)  # no second copy of the pins
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    dry = subprocess.run(["make", "-n", "-B", ".venv/.stamp-torch"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "pip install --quiet torch==2.14.1 torchvision==0.29.1" in dry.stdout


def test_the_main_job_needs_only_the_base_install():
    base = _declared()[None]
    for package in ("torch", "torchvision", "transformers", "torchxrayvision", "open-clip-torch", "pycocoevalcap",
                    "torchmetrics", "scipy"):
        assert package in base, package
    for module in extras.COMMAND_NEEDS["demo"]:
        assert extras.MODULES[module][1] is None, f"progemu demo needs {module}, which is not in the base install"


def test_the_extras_table_agrees_with_pyproject():
    declared = _declared()
    for module, (distribution, extra) in extras.MODULES.items():
        assert _name(distribution) in declared[extra], f"{module}: {distribution} is not declared in {extra or 'the base install'}"
    assert set(extras.COMMAND_NEEDS) == set(COMMANDS)
    for command, modules in extras.COMMAND_NEEDS.items():
        assert set(modules) <= set(extras.MODULES), command


def test_licence_file_is_the_apache_2_text_the_metadata_declares():
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert "LICENSE" in PYPROJECT["project"]["license-files"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text.splitlines()) == 202


# ------------------------------------------------------------------------------------------- Makefile
@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_demo_installs_only_the_main_jobs_needs_and_make_test_the_test_packages():
    demo = subprocess.run(["make", "-n", "-B", "demo"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "install_system_deps.sh demo" in demo and "install_system_deps.sh test" not in demo
    assert "pip install --quiet -e ." in demo and "[all]" not in demo
    test = subprocess.run(["make", "-n", "-B", "test"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "install_system_deps.sh test" in test and "'.[all]'" in test and "scripts/run_tests.sh" in test
    script = (ROOT / "scripts" / "install_system_deps.sh").read_text(encoding="utf-8")
    demo_part = script.split('if [ "$target" = test ]; then')[0]
    assert "chromium" not in demo_part.split("set -euo pipefail")[1]  # the demo target never asks for a browser


# ---------------------------------------------------------------------------------- start-up checks
def _main(command: str):
    return importlib.import_module(COMMANDS[command][0]).main


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_names_its_missing_packages_before_parsing_or_working(command, monkeypatch):
    monkeypatch.setattr(extras, "_installed", lambda module: False)
    with pytest.raises(extras.MissingDependencies) as caught:
        _main(command)(["--no-such-flag"])  # a check after argparse would exit 2 on this flag instead
    message = caught.value.message
    assert message.startswith(f"progemu {command}: missing Python package(s): ")
    assert "nothing was done" in message
    if command == "serve":
        assert "gradio (pip: gradio)" in message and "pip install 'progemu[serve]'" in message
    else:
        assert "progemu[" not in message  # everything else is in the base install
        assert "pip install '" in message


def test_the_message_names_the_extra_for_an_optional_package(monkeypatch):
    monkeypatch.setattr(extras, "_installed", lambda module: module != "gradio")
    with pytest.raises(extras.MissingDependencies) as caught:
        _main("serve")(["--model", "demo"])
    assert str(caught.value) == ("progemu serve: missing Python package(s): gradio (pip: gradio).\n"
                                 "  install the 'serve' extra: pip install 'progemu[serve]'\n"
                                 "  nothing was done; run the command again afterwards.")
    monkeypatch.setattr(extras, "_installed", lambda module: module != "openai")
    assert extras.missing_for("curate", ["--annotator", "rules"]) == []
    assert extras.missing_for("curate", ["--annotator=llm"]) == ["openai"]
    with pytest.raises(extras.MissingDependencies, match=r"pip install 'progemu\[curate\]'"):
        extras.prepare_command("curate", ["--mimic", "m", "--out", "o", "--annotator", "llm"])


def test_base_packages_are_named_with_their_declared_version(monkeypatch):
    monkeypatch.setattr(extras, "_installed", lambda module: module not in {"torch", "torchvision"})
    monkeypatch.setattr(extras, "pip_requirement", lambda name: {"torch": "torch==2.14.1"}.get(name, name))
    with pytest.raises(extras.MissingDependencies) as caught:
        extras.prepare_command("generate", ["--model", "m"])
    assert "torch (pip: torch)" in str(caught.value)
    assert "pip install 'torch==2.14.1'" in str(caught.value)


def test_help_is_never_blocked_by_a_missing_package(monkeypatch, capsys):
    monkeypatch.setattr(extras, "_installed", lambda module: False)
    with pytest.raises(SystemExit) as caught:
        _main("serve")(["--help"])
    assert caught.value.code == 0 and "--model" in capsys.readouterr().out


def test_meteor_needs_java_and_the_message_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(extras, "_installed", lambda module: True)
    monkeypatch.setattr(extras.shutil, "which", lambda name: None)
    with pytest.raises(extras.MissingDependencies) as caught:
        extras.prepare_command("evaluate", ["--data", "d", "--out", "o"])
    assert "default-jre-headless" in str(caught.value) and "--no-meteor" in str(caught.value)
    with pytest.raises(extras.MissingDependencies, match="default-jre-headless"):
        extras.prepare_command("demo", ["--out", "o"])
    extras.prepare_command("evaluate", ["--data", "d", "--out", "o", "--no-meteor"])  # no Java needed
    extras.prepare_command("evaluate", ["train-evaluators", "--data", "d", "--out", "o"])


def test_weight_loading_bars_are_hidden_unless_verbose():
    from transformers.utils import logging as hf_logging

    try:
        extras.prepare_command("generate", ["--model", "m"])
        assert not hf_logging.is_progress_bar_enabled()
        extras.prepare_command("generate", ["--model", "m", "--verbose"])
        assert hf_logging.is_progress_bar_enabled()
    finally:
        hf_logging.enable_progress_bar()


# -------------------------------------------------------------------------------------- file modes
@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_outputs_get_the_mode_the_umask_allows(tmp_path, umask, expected):
    import numpy as np

    old = os.umask(umask)
    try:
        assert file_mode() == expected
        paths = [atomic_write_text(tmp_path / "a.txt", "x"), atomic_write_json(tmp_path / "m.json", {"a": 1}),
                 atomic_save_png(tmp_path / "i.png", np.zeros((4, 4), np.float32))]
        from safetensors.numpy import save_file  # writes 0600 whatever the umask

        save_file({"w": np.zeros(2, np.float32)}, str(tmp_path / "w.safetensors"))
        match_umask(tmp_path)
        paths.append(tmp_path / "w.safetensors")
    finally:
        os.umask(old)
    for path in paths:
        assert stat.S_IMODE(path.stat().st_mode) == expected, path.name


# ----------------------------------------------------------------------------------------- .gitignore
@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
def test_gitignore_covers_the_readme_outputs_and_nothing_of_the_package():
    outputs = ["world/synth_config.json", "icg/manifest.jsonl", "tok/config.json", "model/progemu.json", "prior.png",
               "result/result.json", "result-demo/result.json", "evaluators/evaluators.json", "eval/metrics.json",
               "demo-out/eval/table.md"]
    ignored = subprocess.run(["git", "check-ignore", *outputs], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert ignored == outputs
    kept = ["src/progemu/model/checkpoint.py", "src/progemu/assets/demo/model/progemu.json", "src/progemu/evaluate/cli.py"]
    assert subprocess.run(["git", "check-ignore", *kept], cwd=ROOT, capture_output=True, text=True).stdout == ""


# -------------------------------------------------------------------------------------------- wheel
@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheelhouse")
    setuptools = pytest.importorskip("setuptools")
    # this environment's setuptools builds the wheel offline when it knows PEP 639's licence fields (>= 77);
    # an older one: pip fetches a new one for an isolated build
    flags = ["--no-build-isolation"] if int(setuptools.__version__.split(".")[0]) >= 77 else []
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *flags, "-q", "-w", str(out), str(ROOT)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    (path,) = out.glob("progemu-*.whl")
    return path


def test_the_wheel_declares_the_dependencies_and_carries_licence_and_demo_weights(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(info).decode("utf-8")
        demo_meta = json.loads(archive.read("progemu/assets/demo/model/progemu.json"))
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert "torch==2.14.1" in requires and "torchvision==0.29.1" in requires
    for package in ("torchxrayvision", "open-clip-torch", "pycocoevalcap", "torchmetrics"):
        assert any(r.startswith(package) and "extra ==" not in r for r in requires), package
    assert any(r.startswith("gradio") and 'extra == "serve"' in r for r in requires)
    assert "License-Expression: Apache-2.0" in metadata
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    for asset in ("model/model.safetensors", "model/image_tokenizer/model.safetensors", "evaluators/evaluators.json",
                  "MANIFEST.json"):
        assert f"progemu/assets/demo/{asset}" in names, asset
    from progemu.demo import DemoConfig, sampling_settings

    assert demo_meta["sampling"] == sampling_settings(DemoConfig())  # the settings the demo evaluates with


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("PROGEMU_TEST_WHEEL_INSTALL") != "1",
                    reason="installs the wheel and torch (~5 GB from the package index) into a fresh virtual "
                           "environment and runs `progemu demo` (minutes): set PROGEMU_TEST_WHEEL_INSTALL=1")
def test_a_fresh_virtualenv_with_the_wheel_runs_the_demo_and_prints_the_table(wheel, tmp_path):
    env_dir = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
    pip = subprocess.run([str(env_dir / "bin" / "pip"), "install", "-q", str(wheel)], capture_output=True, text=True,
                         timeout=1800)
    assert pip.returncode == 0, pip.stderr[-3000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    run = subprocess.run([str(env_dir / "bin" / "progemu"), "demo", "--out", "demo-out"], cwd=work, capture_output=True,
                         text=True, timeout=1800)
    assert run.returncode == 0, (run.stdout[-3000:], run.stderr[-3000:])
    table = (work / "demo-out" / "eval" / "table.md").read_text(encoding="utf-8")
    assert table in run.stdout
    assert "| copy-prior image + retrieved interpretation (reference) |" in table
    assert "demo model: " in run.stdout and str(env_dir) in run.stdout  # the packaged weights, found from the wheel
