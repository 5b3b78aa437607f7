"""The `gpt1` command as a user types it: help, version, config errors and `config show`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml
from typer.testing import CliRunner

from launch.cli import app
from tests.conftest import CONFIGS, GPT1, ROOT


def gpt1(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run the installed console script, as a user would."""
    return subprocess.run([GPT1, *args], capture_output=True, text=True, cwd=cwd, env={"COLUMNS": "200", "PATH": ""})


def test_help_lists_the_commands():
    out = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert out.exit_code == 0
    for command in ("run", "config"):
        assert command in out.output


def test_every_command_has_help():
    for args in (["run", "--help"], ["config", "--help"], ["config", "show", "--help"]):
        out = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
        assert out.exit_code == 0 and "Usage" in out.output, args


def test_version_prints_the_package_version():
    out = CliRunner().invoke(app, ["--version"])
    assert out.exit_code == 0 and out.output.startswith("gpt1 ")


def test_bad_override_exits_2_with_one_line_naming_the_key():
    proc = gpt1("run", "configs/tiny.yaml", "--set", "model.n_layer=abc")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "model.n_layer" in lines[0] and "configs/tiny.yaml" in lines[0]


def test_missing_config_exits_2():
    out = CliRunner().invoke(app, ["config", "show", "nope.yaml"])
    assert out.exit_code == 2 and "nope.yaml: config file not found" in out.output


def test_config_show_prints_the_resolved_config_with_overrides():
    out = CliRunner().invoke(app, ["config", "show", str(CONFIGS / "tiny.yaml"), "--set", "train.lr=0.5"])
    assert out.exit_code == 0, out.output
    shown = yaml.safe_load(out.stdout)
    assert shown["train"]["lr"] == 0.5
    assert shown["model"]["n_layer"] == 2, "preset values are spelled out"
    assert set(shown) == {"run", "data", "tokenizer", "shards", "model", "train", "deepspeed", "eval", "report"}
