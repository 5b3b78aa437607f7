"""Pretraining through the real `deepspeed` launcher on CPU: loss goes down, a kill -9 resumes to the
same loss curve, checkpoints export to transformers, and the CLI runs it as a stage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from launch.launchers import local_command
from tests.conftest import CONFIGS, GPT1, free_port
from training.checkpoint import LATEST, latest, load_weights, prune
from training.config import DeepSpeedConfig, ModelConfig, TrainConfig, TrainJob
from training.metrics import read_metrics
from training.model import GPT

# Small enough for seconds per run, big enough to show accumulation (4 × 2 × 2 processes = 16).
TRAIN = TrainConfig(global_batch=16, micro_batch=4, max_steps=40, lr=1e-3, warmup_steps=5, log_every=1, eval_every=10,
                    eval_batches=4, checkpoint_every=10)  # fmt: skip
# What depends on timing, not on the computation.
TIMING = ("tokens_per_s", "memory_gb", "mfu")


def write_job(shards: tuple[Path, dict], out: Path) -> Path:
    folder, manifest = shards
    vocab = json.loads((folder / "index.json").read_text())["vocab_size"]
    job = TrainJob(model=ModelConfig(preset="debug", n_positions=128, vocab_size=vocab), train=TRAIN,
                   deepspeed=DeepSpeedConfig(zero_stage=1), shards=folder,
                   tokenizer=Path(manifest["inputs"]["tokenizer"]["dir"]), out=out, seed=7)  # fmt: skip
    out.mkdir(parents=True)
    (out / "job.json").write_text(job.model_dump_json())
    return out / "job.json"


def launch(job: Path, nproc: int = 2, **popen) -> subprocess.Popen:
    return subprocess.Popen(local_command(job, nproc, free_port()), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, **popen)  # fmt: skip


def finish(proc: subprocess.Popen) -> str:
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-3000:]
    return output


def curve(out: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(out) if r["split"] != "run"]


@pytest.fixture(scope="module")
def trained(tiny_shards, tmp_path_factory) -> Path:
    """One uninterrupted 2-process run of 40 steps."""
    out = tmp_path_factory.mktemp("pretrain") / "straight"
    finish(launch(write_job(tiny_shards, out)))
    return out


def test_two_process_deepspeed_run_lowers_the_loss(trained):
    records = read_metrics(trained)
    assert records[0] == {"split": "run", "step": 0, "world_size": 2, "micro_batch": 4, "accumulation": 2,
                          "global_batch": 16, "tokens_per_step": 2048, "steps": 40, "tokens": 81920,
                          "epochs": records[0]["epochs"], "start_step": 0}  # fmt: skip
    train = [r["loss"] for r in records if r["split"] == "train"]
    val = [r["loss"] for r in records if r["split"] == "val"]
    assert len(train) == 40 and len(val) == 4
    assert sum(train[-5:]) / 5 < sum(train[:5]) / 5 - 0.5
    assert val[-1] < val[0]
    result = json.loads((trained / "result.json").read_text())
    assert result["steps"] == 40 and result["tokens"] == 40 * 16 * 128 and result["val_loss"] == val[-1]
    state = json.loads((trained / "checkpoints/step-00000040/checkpoint.json").read_text())
    assert state["world_size"] == 2 and state["sampler"]["position"] == 40 * 16
    assert (trained / "checkpoints" / LATEST).read_text() == "step-00000040"
    assert all(r["lr"] > 0 and r["grad_norm"] > 0 for r in records if r["split"] == "train")
    assert any((trained / "tensorboard").iterdir())


def test_kill_9_then_rerun_reproduces_the_uninterrupted_loss_curve(trained, tiny_shards, tmp_path):
    out = tmp_path / "killed"
    proc = launch(write_job(tiny_shards, out))
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "checkpoints" / LATEST).is_file():
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert not (out / "result.json").exists(), "the run finished before it was killed"
    killed_at = int((out / "checkpoints" / LATEST).read_text().removeprefix("step-"))
    assert killed_at < 40

    output = finish(launch(out / "job.json"))
    assert f"resumed from {out / 'checkpoints' / f'step-{killed_at:08d}'}" in output
    assert curve(out) == curve(trained)  # loss, lr, grad norm and val loss, step by step, bit for bit


def test_sigterm_saves_a_checkpoint_and_the_rerun_ends_on_the_same_curve(trained, tiny_shards, tmp_path):
    out = tmp_path / "stopped"
    proc = launch(write_job(tiny_shards, out))
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and not (out / "checkpoints" / LATEST).is_file():
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGTERM)  # as a scheduler does: every process of the job
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0 and not (out / "result.json").exists(), output[-2000:]
    assert "stopped by a signal at step" in output
    stopped_at = int((out / "checkpoints" / LATEST).read_text().removeprefix("step-"))
    assert 10 <= stopped_at < 40 and not list((out / "checkpoints").glob("*.tmp"))

    finish(launch(out / "job.json"))
    assert curve(out) == curve(trained)


def test_only_finished_checkpoints_count_and_old_ones_are_pruned(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (10, 20, 30, 40, 50):
        (root / f"step-{step:08d}").mkdir(parents=True)
        (root / f"step-{step:08d}" / "checkpoint.json").write_text("{}")
    (root / "step-00000060.tmp").mkdir()  # killed mid-write: complete-looking, never renamed
    (root / "step-00000060.tmp" / "checkpoint.json").write_text("{}")
    (root / LATEST).write_text("step-00000050")
    assert latest(root) == root / "step-00000050"
    prune(root, keep=2, keep_every=20)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00000020", "step-00000040", "step-00000050"]


def test_export_loads_in_transformers_with_the_same_logits(trained, tmp_path):
    from transformers import AutoTokenizer, OpenAIGPTLMHeadModel

    from tokenizer.bpe import BPETokenizer

    out = tmp_path / "hf"
    proc = subprocess.run([GPT1, "export", str(trained), str(out), "--format", "hf"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in out.iterdir()
    }
    cfg, weights = load_weights(trained)
    ours = GPT(cfg).eval()
    ours.load_state_dict(weights)
    theirs = OpenAIGPTLMHeadModel.from_pretrained(out).eval()
    text = "Return the number of items in a container, counting from zero."
    ids = BPETokenizer.load(trained / "checkpoints/step-00000040/tokenizer").encode(text)
    assert AutoTokenizer.from_pretrained(out)(text)["input_ids"] == ids
    x = torch.tensor([ids])
    with torch.no_grad():
        assert torch.allclose(ours(x).logits, theirs(x).logits, atol=1e-4)


def test_export_of_a_folder_that_is_not_a_checkpoint_is_a_clear_error(tmp_path):
    proc = subprocess.run([GPT1, "export", str(tmp_path), str(tmp_path / "hf")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith(f"error: {tmp_path}: not a checkpoint")


def test_a_bad_job_is_one_line_and_exit_2(tiny_shards, tmp_path):
    job = write_job(tiny_shards, tmp_path / "bad")
    spec = json.loads(job.read_text())
    spec["train"]["micro_batch"] = 3
    job.write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, "-m", "training.run", str(job)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "global_batch (16) is not a multiple of train.micro_batch (3)" in proc.stderr


def gpt1_train(out: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [GPT1, "train", str(CONFIGS / "tiny.yaml"), "--set", f"run.out_dir={out}", "--set", "train.max_steps=6",
           "--set", "train.eval_every=3", *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True)


def test_train_command_runs_the_stage_once_and_then_skips_it(tiny_shards, tiny_out, ray_address):
    first = gpt1_train(tiny_out, "--ray-address", ray_address)
    assert first.returncode == 0, first.stderr
    folder = Path(first.stdout.strip().splitlines()[-1])
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["result"]["steps"] == 6 and manifest["inputs"].keys() == {"tokenizer", "shards"}
    again = gpt1_train(tiny_out, "--ray-address", ray_address, "--resume")
    assert again.returncode == 0 and "pretrain: skipped" in " ".join(again.stderr.split())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "train.micro_batch=5"], "train.global_batch (16) is not a multiple of train.micro_batch (5)"),
        (["--set", "deepspeed.extra.optimizer.type=Adam"], "deepspeed.extra sets optimizer"),
        (["--set", "train.lrr=1"], "train.lrr: unknown key; did you mean 'lr'?"),
        (["--set", "train.max_steps=7", "--resume"], "nothing to resume: no checkpoint in"),
        (["--force", "--resume"], "--force starts over and --resume continues: choose one"),
    ],
)
def test_bad_training_options_fail_clearly(tiny_shards, tiny_out, ray_address, args, message):
    proc = gpt1_train(tiny_out, "--ray-address", ray_address, *args)
    assert proc.returncode == 2, proc.stderr
    assert message in " ".join(proc.stderr.split())
    assert "Traceback" not in proc.stderr


def test_a_rank_that_fails_stops_the_whole_job_with_one_line(tiny_shards, tmp_path):
    """Rank 1 meets token ids beyond the vocabulary at step 3; rank 0 must not wait for it forever."""
    import shutil

    import numpy as np

    from training.data import Sampler, TokenWindows

    shards = tmp_path / "shards"
    shutil.copytree(tiny_shards[0], shards)
    windows = TokenWindows(shards, "train")
    sampler = Sampler(len(windows), TRAIN.global_batch, seed=7, rank=1, world_size=2)
    bad = [sampler.next_batch() for _ in range(3)][-1][0]  # rank 1's first window of step 3
    shard = int(np.searchsorted(windows.starts, bad, side="right")) - 1
    index = json.loads((shards / "index.json").read_text())
    path = shards / index["splits"]["train"]["shards"][shard]["file"]
    tokens = np.memmap(path, dtype=np.uint16, mode="r+", offset=64)
    at = (bad - windows.starts[shard]) * windows.seq_len
    tokens[at : at + 10] = 65535
    tokens.flush()
    del tokens, windows

    job = write_job((shards, tiny_shards[1]), tmp_path / "out")
    t0 = time.monotonic()
    proc = launch(job)
    output, _ = proc.communicate(timeout=180)
    assert proc.returncode != 0 and time.monotonic() - t0 < 90
    assert "rank 1 failed: IndexError: index out of range" in output, output[-3000:]
    assert "Traceback" not in output
