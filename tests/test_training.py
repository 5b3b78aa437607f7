"""Pretraining through the real `deepspeed` launcher on CPU: loss goes down, a kill -9 resumes to the
same loss curve, checkpoints export to transformers, and the CLI runs it as a stage."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from launch.launchers import local_command
from pipeline.shard_format import ShardWriter, open_tokens, read_index
from tests.conftest import CONFIGS, GPT1, free_port
from training.checkpoint import LATEST, latest, load_weights, prune, tag
from training.config import DeepSpeedConfig, ModelConfig, TrainConfig, TrainJob
from training.metrics import read_metrics
from training.model import GPT

# Small enough for seconds per run, big enough to show accumulation (4 × 2 × 2 processes = 16).
TRAIN = TrainConfig(global_batch=16, micro_batch=4, max_steps=40, lr=1e-3, warmup_steps=5, log_every=1, eval_every=10,
                    eval_batches=4, checkpoint_every=10)  # fmt: skip
# What depends on timing, not on the computation.
TIMING = ("tokens_per_s", "memory_gb", "mfu", "eta_s")


def write_job(shards: tuple[Path, dict], out: Path, train: TrainConfig = TRAIN, dropout: float = 0.1) -> Path:
    folder, manifest = shards
    vocab = json.loads((folder / "index.json").read_text())["vocab_size"]
    job = TrainJob(model=ModelConfig(preset="debug", n_positions=128, vocab_size=vocab, dropout=dropout), train=train,
                   deepspeed=DeepSpeedConfig(zero_stage=1), shards=folder,
                   tokenizer=Path(manifest["inputs"]["tokenizer"]["dir"]), out=out, seed=7)  # fmt: skip
    out.mkdir(parents=True)
    (out / "job.json").write_text(job.model_dump_json())
    return out / "job.json"


def launch(job: Path, nproc: int = 2, port: int | None = None) -> subprocess.Popen:
    return subprocess.Popen(local_command(job, nproc, port or free_port()), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip


def shared_memory_left(port: int) -> list[Path]:
    """DeepSpeed's CPU all-reduce buffers of the job that used this rendezvous port."""
    return list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_127.0.0.1_{port}_*"))


def finish(proc: subprocess.Popen) -> str:
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-3000:]
    return output


def curve(out: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(out) if r["split"] != "run"]


def kill_when(proc: subprocess.Popen, out: Path, ready: Callable[[], bool]) -> int:
    """SIGKILL every process of the job as soon as `ready()`; returns the step of its latest checkpoint."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and not ready():
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert not (out / "result.json").exists(), "the run finished before it was killed"
    return int((out / "checkpoints" / LATEST).read_text().removeprefix("step-"))


def gpt1_train(out: Path, *args: str) -> subprocess.CompletedProcess:
    """`gpt1 train configs/tiny.yaml` into `out` on 2 processes, with TRAIN's settings."""
    settings = [
        a for k, v in TRAIN.model_dump(include=TRAIN.model_fields_set).items() for a in ("--set", f"train.{k}={v}")
    ]
    cmd = [GPT1, "train", str(CONFIGS / "tiny.yaml"), "--set", f"run.out_dir={out}", "--nproc", "2", *settings, *args]
    return subprocess.run(cmd, capture_output=True, text=True)


@pytest.fixture(scope="module")
def trained(tiny_shards, tiny_out, ray_address) -> Path:
    """One uninterrupted 2-process run of 40 steps: the pretrain stage, started by `gpt1 train`."""
    proc = gpt1_train(tiny_out, "--ray-address", ray_address)
    assert proc.returncode == 0, proc.stderr
    return Path(proc.stdout.strip().splitlines()[-1])


def job_like(trained: Path, out: Path) -> Path:
    """The job of the run in `trained`, writing into `out`."""
    job = json.loads((trained / "job.json").read_text()) | {"out": str(out)}
    out.mkdir(parents=True)
    (out / "job.json").write_text(json.dumps(job))
    return out / "job.json"


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
    assert all(r["lr"] > 0 and r["grad_norm"] > 0 and r["eta_s"] >= 0 for r in records if r["split"] == "train")
    assert records[-2]["split"] == "train" and records[-2]["eta_s"] == 0  # the last step; its validation follows
    optimizer = torch.load(trained / "checkpoints/step-00000040/optimizer.pt", weights_only=True)
    assert optimizer["exp_avg"].keys() == optimizer["exp_avg_sq"].keys() == load_weights(trained)[1].keys()
    assert optimizer["step"] == 40 and optimizer["schedule"]["last_epoch"] == 40
    assert any((trained / "tensorboard").iterdir())


@dataclass
class Interrupted:
    """One run stopped twice on its way to the end, and what each stop left."""

    out: Path
    signalled_at: int  # the last step logged when SIGTERM was sent
    stopped_at: int  # the checkpoint SIGTERM left
    stopped: subprocess.CompletedProcess
    left_by_stop: list[str]  # result.json or unfinished checkpoints, if the stopped run left any
    killed_at: int  # the latest finished checkpoint after SIGKILL
    killed_while_writing: bool  # whether the checkpoint being written was left unfinished
    resumed: str  # the output of the run that finished
    ports: tuple[int, int]  # of the killed run and of the run that finished


@pytest.fixture(scope="module")
def interrupted(trained, tmp_path_factory) -> Interrupted:
    """The uninterrupted run's job, stopped by SIGTERM once its first checkpoint is written, then
    rerun and killed with SIGKILL while its step-30 checkpoint is being written, then rerun to the end."""
    out = tmp_path_factory.mktemp("interrupted") / "run"
    root = out / "checkpoints"
    proc = launch(job_like(trained, out))
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and not (root / LATEST).is_file():
        time.sleep(0.02)
    done = [json.loads(line) for line in (out / "metrics.jsonl").read_text().split("\n")[:-1]]  # whole lines
    signalled_at = max(r["step"] for r in done if r["split"] == "train")
    os.killpg(proc.pid, signal.SIGTERM)  # as a scheduler does: every process of the job
    output, _ = proc.communicate(timeout=120)
    stopped = subprocess.CompletedProcess(proc.args, proc.returncode, output)
    stopped_at = int((root / LATEST).read_text().removeprefix("step-"))
    left_by_stop = [p.name for p in [*root.glob("*.tmp"), out / "result.json"] if p.exists()]

    writing, ports = root / "step-00000030.tmp", (free_port(), free_port())
    killed_at = kill_when(launch(out / "job.json", port=ports[0]), out, writing.is_dir)
    killed_while_writing = writing.exists()
    resumed = finish(launch(out / "job.json", port=ports[1]))
    return Interrupted(out, signalled_at, stopped_at, stopped, left_by_stop, killed_at, killed_while_writing, resumed,
                       ports)  # fmt: skip


def test_sigterm_saves_a_checkpoint_one_step_later_and_stops(interrupted):
    run = interrupted
    assert run.stopped.returncode != 0, run.stopped.stdout[-2000:]
    assert "stopped by a signal at step" in run.stopped.stdout and run.left_by_stop == []
    # The ranks agree on it one step later (the all-reduce runs in the background): the step after the one in progress.
    assert run.signalled_at < run.stopped_at <= run.signalled_at + 2 < 20, (run.signalled_at, run.stopped_at)


def test_kill_9_never_leaves_an_unfinished_checkpoint_taken_as_latest(interrupted):
    run = interrupted
    # Killed while step 30 was being written (unless its rename won the race): never taken as latest.
    assert run.killed_at == 20 if run.killed_while_writing else run.killed_at in (20, 30)
    assert f"resumed from {run.out / 'checkpoints' / f'step-{run.killed_at:08d}'}" in run.resumed
    assert not list((run.out / "checkpoints").glob("*.tmp"))
    assert not shared_memory_left(run.ports[0]) and not shared_memory_left(run.ports[1])  # killed or finished


def test_a_run_stopped_and_killed_ends_on_the_uninterrupted_loss_curve(interrupted, trained):
    assert json.loads((interrupted.out / "result.json").read_text())["steps"] == 40
    assert curve(interrupted.out) == curve(trained)  # loss, lr, grad norm and val loss, step by step, bit for bit


def test_ranks_agree_on_a_stop_one_step_after_it_is_asked_for():
    """The agreement runs in the background between two steps, so it never waits on the device."""
    from training.run import StopRequest, init_process

    init_process()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        stop = StopRequest(None)
        assert stop.agreed() is False
        stop.signal = signal.SIGTERM  # arrives during the next step
        assert stop.agreed() is False  # the all-reduce in flight was started before it
        assert stop.agreed() is True
        assert stop.close() is True and stop.close() is False
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def test_the_stop_agreement_goes_over_gloo_beside_nccl(monkeypatch):
    import torch.distributed as dist

    from training.run import host_group

    made = []
    monkeypatch.setattr(dist, "get_backend", lambda: "gloo")
    assert host_group() is None  # a CPU run's default group is gloo already
    monkeypatch.setattr(dist, "get_backend", lambda: "nccl")
    monkeypatch.setattr(dist, "new_group", lambda **kwargs: made.append(kwargs) or "host group")
    assert host_group() == "host group" and made == [{"backend": "gloo"}]


# One epoch: 24 steps over 389 windows (the last 5 left out), saved every 8 steps, each step's windows recorded.
EPOCH = TRAIN.model_copy(update={"max_steps": None, "epochs": 1.0, "eval_every": 8, "checkpoint_every": 8,
                                 "record_windows": True})  # fmt: skip
EPOCH_WINDOWS = 24 * 16 + 5


@pytest.fixture(scope="module")
def epoch_shards(tiny_shards, tmp_path_factory) -> tuple[Path, dict]:
    """tiny's shards with a train split of EPOCH_WINDOWS windows, so that a short run is a whole epoch."""
    folder, manifest = tiny_shards
    out = tmp_path_factory.mktemp("epoch") / "shards"
    shutil.copytree(folder, out)
    index = read_index(out)
    first = index["splits"]["train"]["shards"][0]
    tokens = open_tokens(folder / first["file"])[: EPOCH_WINDOWS * index["seq_len"] + 1]
    writer = ShardWriter(out / "train" / "epoch.bin", index["vocab_size"])
    writer.write(tokens)
    writer.close()
    index["splits"]["train"]["shards"] = [{**first, "file": "train/epoch.bin", "tokens": len(tokens)}]
    (out / "index.json").write_text(json.dumps(index))
    return out, manifest


def test_resume_on_2_then_1_then_2_processes_continues_the_epoch(epoch_shards, tmp_path):
    """Without dropout, runs on 1 and 2 processes differ only in the order gradients are summed.
    The first 8 steps on 2 processes are the uninterrupted run's: its first checkpoint and its
    metrics, which resuming cuts back to that step."""
    straight = tmp_path / "straight"
    finish(launch(write_job(epoch_shards, straight, EPOCH, dropout=0.0)))
    out = tmp_path / "elastic"
    job, first = write_job(epoch_shards, out, EPOCH, dropout=0.0), EPOCH.checkpoint_every
    shutil.copytree(straight / "checkpoints" / tag(first), out / "checkpoints" / tag(first))
    (out / "checkpoints" / LATEST).write_text(tag(first))
    shutil.copy(straight / "metrics.jsonl", out)
    second = kill_when(launch(job, 1), out, lambda: (out / "checkpoints" / LATEST).read_text() != tag(first))
    output = finish(launch(job, 2))
    assert "written with world_size 1, zero_stage 1, precision fp32; resuming with world_size 2" in output

    records, reference = read_metrics(out), read_metrics(straight)
    plans = [(r["world_size"], r["accumulation"], r["global_batch"], r["start_step"]) for r in records
             if r["split"] == "run"]  # fmt: skip
    assert plans == [(2, 2, 16, 0), (1, 4, 16, first), (2, 2, 16, second)] and 0 < first < second < 24
    # The data: each step reads the uninterrupted run's windows, and the epoch sees every window once.
    windows = [r["windows"] for r in records if r["split"] == "windows"]
    assert windows == [r["windows"] for r in reference if r["split"] == "windows"]
    seen = [w for step in windows for w in step]
    assert len(seen) == len(set(seen)) == 24 * 16 and set(seen) <= set(range(EPOCH_WINDOWS))
    # The optimizer: the same learning rate at each step, and losses equal to float rounding (~1e-7;
    # resuming without AdamW's moments moves them by ~1e-2).
    for split in ("train", "val"):
        ours, theirs = ([r for r in rs if r["split"] == split] for rs in (records, reference))
        assert [r["step"] for r in ours] == [r["step"] for r in theirs]
        assert [r["loss"] for r in ours] == pytest.approx([r["loss"] for r in theirs], rel=1e-5)
    assert [r["lr"] for r in records if "lr" in r] == [r["lr"] for r in reference if "lr" in r]


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


def test_train_command_runs_the_stage_once_and_then_skips_it(trained, tiny_out, ray_address):
    manifest = json.loads((trained / "manifest.json").read_text())
    assert manifest["result"]["steps"] == 40 and manifest["inputs"].keys() == {"tokenizer", "shards"}
    again = gpt1_train(tiny_out, "--ray-address", ray_address, "--resume")
    assert again.returncode == 0 and "pretrain: skipped" in " ".join(again.stderr.split())
    assert Path(again.stdout.strip().splitlines()[-1]) == trained


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
    proc = launch(job)
    lines, failed_at = [], None
    for line in proc.stdout:  # until every process of the job has exited
        lines.append(line)
        if failed_at is None and "failed:" in line:
            failed_at = time.monotonic()
    output = "".join(lines)
    assert proc.wait() != 0 and failed_at is not None, output[-3000:]
    assert time.monotonic() - failed_at < 30  # rank 0 was waiting in a collective; it is stopped, not left there
    assert "rank 1 failed: IndexError: index out of range" in output, output[-3000:]
    assert "Traceback" not in output


FAULTS_A_STEP = """
import resource, torch
from training.run import keep_freed_memory
def faults() -> int:  # in a step after three, its activations alive together, of sizes that change with the batch
    for _ in range(4):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        held = [torch.ones(mb << 18) for mb in (6, 9, 7, 11, 8, 10, 5)]
        del held
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
default = faults()
keep_freed_memory()
print(default, faults())
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's allocator")
def test_a_cpu_process_reuses_the_memory_a_step_frees():
    """A step's 56 MB of tensors, after a few steps, are faulted in afresh (14,336 pages) while glibc
    hands freed blocks back to the OS (its 128 KB mmap threshold, fixed here: left to itself it
    moves, and whether it trims depends on what else sits on the heap), and come from memory freed
    before once the process keeps it."""
    env = {**os.environ, "GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=131072"}
    run = subprocess.run([sys.executable, "-c", FAULTS_A_STEP], capture_output=True, text=True, check=True, env=env)
    default, kept = map(int, run.stdout.split())
    assert default > 14_000 and kept < 500
