"""Launchers: the commands and scripts they build, their checks of hostfiles and options, and a
real two-worker run on Ray Train."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from launch.launchers import LaunchError, Slurm, hosts_command, local_command, read_hostfile, slurm_script
from tests.conftest import CONFIGS, GPT1


def test_local_command_starts_the_training_module_under_the_deepspeed_launcher(tmp_path):
    cmd = local_command(tmp_path / "job.json", 4, 29555)
    assert cmd[:3] == [sys.executable, "-m", "deepspeed.launcher.runner"]
    assert cmd[cmd.index("--num_gpus") + 1] == "4" and cmd[cmd.index("--master_port") + 1] == "29555"
    assert cmd[-3:] == ["--module", "training.run", str(tmp_path / "job.json")]


def test_hostfile_is_read_with_comments_and_gives_the_master(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# two nodes\nnode-1 slots=8\n\nnode-2   slots=8  # spare\n")
    assert read_hostfile(hostfile) == {"node-1": 8, "node-2": 8}
    cmd = hosts_command(tmp_path / "job.json", hostfile, 29500)
    assert cmd[cmd.index("--hostfile") + 1] == str(hostfile) and cmd[cmd.index("--master_addr") + 1] == "node-1"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("node-1 slots=8\nnode-2 8\n", "hosts:2: expected 'HOST slots=N', got 'node-2 8'"),
        ("node-1 slots=0\n", "hosts:1: node-1 has slots=0; it must be at least 1"),
        ("node-1 slots=8\nnode-1 slots=8\n", "hosts:2: node-1 is listed twice"),
        ("node-1 slots=8; rm -rf /\n", "hosts:1: expected 'HOST slots=N', got 'node-1 slots=8; rm -rf /'"),
        ("# nothing\n", "hosts: no hosts listed"),
    ],
)
def test_a_bad_hostfile_names_the_line(tmp_path, text, message):
    hostfile = tmp_path / "hosts"
    hostfile.write_text(text)
    with pytest.raises(LaunchError) as error:
        read_hostfile(hostfile)
    assert str(error.value).endswith(message)


def test_launch_hosts_checks_the_hostfile_before_running_anything(tmp_path):
    proc = subprocess.run([GPT1, "launch", "hosts", str(CONFIGS / "tiny.yaml"), "--hostfile", str(tmp_path / "no"),
                           "--set", f"run.out_dir={tmp_path}"], capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {tmp_path / 'no'}: hostfile not found"
    assert not (tmp_path / "tiny").exists()


def sbatch_lines(script: str) -> dict[str, str]:
    options = [line.removeprefix("#SBATCH --") for line in script.splitlines() if line.startswith("#SBATCH")]
    return dict(option.split("=", 1) for option in options if "=" in option)


def test_slurm_script_for_2_nodes_of_8_gpus_starts_16_processes_with_srun(tmp_path):
    job = tmp_path / "run dir" / "it's $HOME" / "job.json"
    script = slurm_script(job, tmp_path, Slurm(nodes=2, gpus_per_node=8, partition="gpu", time="2-00:00:00"))
    assert script.startswith("#!/bin/bash\n")
    assert sbatch_lines(script) == {
        "job-name": "gpt1", "nodes": "2", "ntasks-per-node": "8", "gpus-per-node": "8", "partition": "gpu",
        "time": "2-00:00:00", "output": f"{tmp_path}/slurm-%j.out", "signal": "USR1@180",
    }  # fmt: skip
    assert "#SBATCH --requeue" in script
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    (srun,) = [line for line in script.splitlines() if line.startswith("srun ")]
    assert shlex.split(srun) == ["srun", "--kill-on-bad-exit=1", sys.executable, "-m", "training.run", str(job), "||",
                                 "status=$?"]  # fmt: skip
    assert 'if [ "$status" -eq 75 ]; then' in script and 'scontrol requeue "$SLURM_JOB_ID"' in script
    assert 'MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"' in script
    assert "ssh" not in script and "pdsh" not in script


def test_launch_slurm_renders_writes_and_submits_the_script(tiny_shards, tiny_out, ray_address, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/sbatch-args\necho "Submitted batch job 42"\n')
    (bin_dir / "sbatch").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    proc = subprocess.run([GPT1, "launch", "slurm", str(CONFIGS / "tiny.yaml"), "--nodes", "2", "--gpus-per-node", "8",
                           "--partition", "gpu", "--set", f"run.out_dir={tiny_out}", "--set", "train.max_steps=8",
                           "--submit"], capture_output=True, text=True, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert sbatch_lines(proc.stdout)["nodes"] == "2"
    (srun,) = [line for line in proc.stdout.splitlines() if line.startswith("srun ")]
    job = Path(shlex.split(srun)[-3])
    spec = json.loads(job.read_text())
    assert spec["train"]["max_steps"] == 8 and spec["shards"] == str(tiny_shards[0])
    assert (tmp_path / "sbatch-args").read_text().strip() == str(job.parent / "pretrain.sbatch")
    assert "Submitted batch job 42" in proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nodes", "0", "--gpus-per-node", "8"], "--nodes must be at least 1 (got 0)"),
        (["--nodes", "2", "--gpus-per-node", "8", "--partition", "gpu; rm -rf ~"],
         "--partition 'gpu; rm -rf ~': only letters, digits and ._:+,=@%- are allowed"),
        (["--nodes", "2", "--gpus-per-node", "8", "--time", "tomorrow"],
         "--time 'tomorrow': expected minutes, HH:MM:SS or D-HH:MM:SS"),
    ],
)  # fmt: skip
def test_bad_slurm_options_are_one_line_each(tmp_path, args, message):
    proc = subprocess.run([GPT1, "launch", "slurm", str(CONFIGS / "tiny.yaml"), *args, "--set",
                           f"run.out_dir={tmp_path}"], capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {message}"


def test_ray_launcher_trains_on_two_ray_train_workers(tiny_shards, tiny_out, ray_address):
    proc = subprocess.run([GPT1, "launch", "ray", str(CONFIGS / "tiny.yaml"), "--num-workers", "2", "--address",
                           ray_address, "--cpu", "--set", f"run.out_dir={tiny_out}", "--set", "train.max_steps=4",
                           "--set", "train.eval_every=2"], capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    folder = Path(proc.stdout.strip().splitlines()[-1])
    state = json.loads((folder / "checkpoints/step-00000004/checkpoint.json").read_text())
    assert state["world_size"] == 2
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["result"]["steps"] == 4 and manifest["result"]["val_loss"] > 0
