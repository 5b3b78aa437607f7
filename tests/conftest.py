"""Shared fixtures. Tests never touch the network; heavy services are started once per session."""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
GPT1 = str(Path(sys.executable).with_name("gpt1"))


@pytest.fixture(autouse=True)
def environment_restored() -> Iterator[None]:
    """Put the environment back after each test: one that joins a one-process group in this process
    (fine-tuning in-process) sets RANK, WORLD_SIZE, MASTER_PORT..., which child processes of later
    tests must not inherit."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def write_config(tmp_path: Path):
    """Write a YAML config file into the test's folder and return its path."""

    def write(text: str, name: str = "cfg.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    """One real Ray head on 127.0.0.1 for the whole suite, as a user's cluster would be; this
    process is connected to it, and subprocesses reach it with --ray-address."""
    # Token authentication as Ray enables it by default, with a token of the suite's own that
    # this process and every subprocess present (set before Ray is imported: it reads them once).
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    ray = pytest.importorskip("ray")
    cli = str(Path(sys.executable).with_name("ray"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    subprocess.run(
        [cli, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
         "--include-dashboard=false", "--disable-usage-stats"],
        check=True, capture_output=True, env=env,
    )  # fmt: skip
    address = f"127.0.0.1:{port}"
    ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    try:
        yield address
    finally:
        ray.shutdown()
        subprocess.run([cli, "stop", "--force"], capture_output=True, env=env)


@pytest.fixture(scope="session")
def tiny_out(ray_address, tmp_path_factory) -> Path:
    """An output folder where `configs/tiny.yaml`'s data stage has run; later stages run on top."""
    out = tmp_path_factory.mktemp("tiny-run")
    subprocess.run([GPT1, "data", str(CONFIGS / "tiny.yaml"), "--set", f"run.out_dir={out}", "--ray-address",
                    ray_address], check=True, capture_output=True)  # fmt: skip
    return out


def build_shards(out: Path, ray_address: str, *args: str) -> subprocess.CompletedProcess:
    """`gpt1 shards build configs/tiny.yaml` into `out`."""
    cmd = [GPT1, "shards", "build", str(CONFIGS / "tiny.yaml"), "--set", f"run.out_dir={out}", "--ray-address",
           ray_address, *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True)


def built(proc: subprocess.CompletedProcess) -> tuple[Path, dict]:
    """The folder and manifest of a finished `gpt1 ... build`-style command."""
    assert proc.returncode == 0, proc.stderr
    folder = Path(proc.stdout.strip().splitlines()[-1])
    return folder, json.loads((folder / "manifest.json").read_text())


@pytest.fixture(scope="session")
def tiny_shards(tiny_out, ray_address) -> tuple[Path, dict]:
    """`configs/tiny.yaml`'s token shards (and tokenizer), built once in tiny_out."""
    return built(build_shards(tiny_out, ray_address))
