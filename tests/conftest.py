"""Shared fixtures. Tests never touch the network; heavy services are started once per run.

The suite runs in two pytest-xdist workers, a test file to each (`--dist loadfile`, so a module's
fixtures are built once): most tests wait on subprocesses starting, and two at once keep both
cores busy. The workers share one Ray head; each builds its own session fixtures. `pytest -n 0`
runs everything in one process."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
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


# The slowest modules, first: each worker takes the next file when it is free, so the files left for
# the end are short ones and the two workers end together.
SLOWEST_FIRST = ["test_training", "test_shards", "test_end_to_end", "test_launch", "test_data_stage",
                 "test_eval_model", "test_pool", "test_eval_cli", "test_tokenizer", "test_doctor"]  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))


def pytest_configure(config: pytest.Config) -> None:
    """Once per run (in the controller when pytest-xdist runs the suite in workers, which inherit its
    environment): a folder the workers share, and a Ray token of the suite's own, which every
    process and subprocess presents (set before Ray is imported: it reads them once)."""
    if hasattr(config, "workerinput"):
        return
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32),
                      GPT1_SUITE_DIR=tempfile.mkdtemp(prefix="gpt1-suite-"))  # fmt: skip
    os.environ.pop("RAY_AUTH_TOKEN_PATH", None)


def pytest_unconfigure(config: pytest.Config) -> None:
    """After the last test of every worker: stop the Ray head if one was started."""
    if hasattr(config, "workerinput"):
        return
    shared = Path(os.environ.pop("GPT1_SUITE_DIR"))
    if (shared / "ray-address").exists():
        ray_cli("stop", "--force")
    shutil.rmtree(shared, ignore_errors=True)


def ray_cli(*args: str) -> None:
    """This environment's `ray` command, never aimed at a RAY_ADDRESS the shell may have set."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    subprocess.run([str(Path(sys.executable).with_name("ray")), *args], check=True, capture_output=True, env=env)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Held by one process of the run at a time."""
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    """One real Ray head on 127.0.0.1 for the whole run, as a user's cluster would be, started by
    the first worker that needs it and stopped when the run ends; this process is connected to it,
    and subprocesses reach it with --ray-address."""
    ray = pytest.importorskip("ray")
    shared = Path(os.environ["GPT1_SUITE_DIR"])
    with locked(shared / "ray.lock"):
        if not (shared / "ray-address").exists():
            port = free_port()
            ray_cli("start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
                    "--include-dashboard=false", "--disable-usage-stats")  # fmt: skip
            (shared / "ray-address").write_text(f"127.0.0.1:{port}")
        address = (shared / "ray-address").read_text()
    ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    try:
        yield address
    finally:
        ray.shutdown()


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
