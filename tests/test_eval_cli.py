"""`gpt1 eval` from a checkpoint: the stage runs, writes results and a table; mistakes are one line."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import CONFIGS, GPT1
from tests.test_eval_model import write_checkpoint
from tokenizer.bpe import BPETokenizer
from training.config import ModelConfig


@pytest.fixture(scope="module")
def checkpoint(tiny_shards, tmp_path_factory) -> Path:
    tok = BPETokenizer.load(tiny_shards[1]["inputs"]["tokenizer"]["dir"])
    cfg = ModelConfig(preset="debug", vocab_size=tok.vocab_size, n_positions=128)
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "step-00000000", tok, cfg)


def gpt1_eval(out: Path, ray_address: str, *args: str) -> subprocess.CompletedProcess:
    cmd = [GPT1, "eval", str(CONFIGS / "tiny.yaml"), "--set", f"run.out_dir={out}", "--ray-address", ray_address,
           "--set", "eval.epochs=1", "--set", "eval.ablations=[]", "--set", "eval.seeds=[0]", *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True)


def test_eval_from_a_checkpoint_scores_the_chosen_task(checkpoint, tiny_out, ray_address):
    proc = gpt1_eval(tiny_out, ray_address, "--checkpoint", str(checkpoint), "--tasks", "proxy_shuffle")
    assert proc.returncode == 0, proc.stderr
    folder = Path(proc.stdout.strip().splitlines()[-1])
    results = json.loads((folder / "proxy_shuffle" / "results.json").read_text())
    assert results["kind"] == "classification" and results["splits"]["proxy_shuffle"]["n"] > 0
    assert [p.name for p in folder.iterdir() if p.is_dir()] == ["proxy_shuffle"]
    assert "proxy_shuffle" in proc.stderr and "accuracy" in proc.stderr
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["inputs"]) == {"data"} and "proxy_shuffle" in manifest["tasks"]
    again = gpt1_eval(tiny_out, ray_address, "--checkpoint", str(checkpoint), "--tasks", "proxy_shuffle")
    assert again.returncode == 0 and "eval: skipped" in " ".join(again.stderr.split())


def test_a_task_that_is_not_configured_is_one_line(checkpoint, tiny_out, ray_address):
    proc = gpt1_eval(tiny_out, ray_address, "--checkpoint", str(checkpoint), "--tasks", "rte")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --tasks: rte not in eval.tasks (proxy_shuffle, proxy_order)"


def test_missing_task_files_are_one_line_naming_the_folder(checkpoint, tiny_out, ray_address, tmp_path):
    proc = gpt1_eval(tiny_out, ray_address, "--checkpoint", str(checkpoint), "--set",
                     f"eval.tasks=[{{name: rte, data_dir: {tmp_path / 'glue' / 'RTE'}}}]")  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'glue' / 'RTE'}: rte data_dir not found"
