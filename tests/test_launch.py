"""Launchers: the commands and scripts they build, their checks of hostfiles and options, and a
real two-worker run on Ray Train."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch.launchers import (
    LaunchError,
    Slurm,
    hostfile_from_slurm,
    hosts_command,
    local_command,
    read_hostfile,
    slurm_script,
)
from tests.conftest import CONFIGS, GPT1, ROOT


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
    job = Path(shlex.split(script_line(proc.stdout, "srun "))[-3])
    spec = json.loads(job.read_text())
    assert spec["train"]["max_steps"] == 8 and spec["shards"] == str(tiny_shards[0])
    assert (tmp_path / "sbatch-args").read_text().strip() == str(job.parent / "pretrain.sbatch")
    assert "Submitted batch job 42" in proc.stderr
    # In the job, the line before srun finds every stage complete and writes the same job again.
    written = job.read_text()
    job.unlink()
    prepare = subprocess.run(shlex.split(script_line(proc.stdout, "launch job"), comments=True), capture_output=True,
                             text=True)  # fmt: skip
    assert prepare.returncode == 0, prepare.stderr
    assert job.read_text() == written


def script_line(script: str, text: str) -> str:
    (line,) = [line for line in script.splitlines() if text in line]
    return line


def test_launch_slurm_renders_offline_before_any_stage_has_run(tmp_path):
    offline = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [GPT1, "launch", "slurm", str(CONFIGS / "gpt1.yaml"), "--nodes", "2", "--gpus-per-node", "8", "--set",
               f"run.out_dir={tmp_path}"]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, env=offline)
    assert proc.returncode == 0, proc.stderr
    assert "the data stage is not complete for this config: the job runs it first" in " ".join(proc.stderr.split())
    assert sorted(p.name for p in (tmp_path / "gpt1").iterdir()) == ["slurm"]  # no stage ran
    lines = proc.stdout.splitlines()
    prepare, srun = script_line(proc.stdout, "launch job"), script_line(proc.stdout, "srun ")
    assert lines.index(prepare) < lines.index(srun)
    # When the job runs where the hub is out of reach too, it stops at once with one line.
    job = subprocess.run(shlex.split(prepare, comments=True), capture_output=True, text=True, env=offline)
    errors = [line for line in job.stderr.splitlines() if line.startswith("error:")]
    assert job.returncode == 2 and len(errors) == 1 and "Traceback" not in job.stderr
    assert errors[0].startswith("error: data.sources[bookcorpus]: cannot open hub dataset 'bookcorpus/bookcorpus'")


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


STAND_IN_SRUN = """#!/bin/bash
# srun as a test stand-in: one local process per task, each with SLURM's variables; the worst status.
while [[ "$1" == --* ]]; do shift; done
pids=()
for ((i = 0; i < SLURM_NTASKS; i++)); do SLURM_PROCID=$i SLURM_LOCALID=$i "$@" & pids+=($!); done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
"""
STAND_IN_SCONTROL = """#!/bin/bash
if [ "$1" = show ]; then echo localhost; else echo "$@" >> "$SCONTROL_LOG"; fi
"""


def test_slurm_script_trains_under_srun_and_requeues_itself_when_warned(tiny_shards, tmp_path):
    import psutil

    from tests.conftest import free_port
    from tests.test_training import write_job

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", STAND_IN_SRUN), ("scontrol", STAND_IN_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    job = write_job(tiny_shards, tmp_path / "out")
    script = tmp_path / "pretrain.sbatch"
    script.write_text(slurm_script(job, tmp_path, Slurm(nodes=1, gpus_per_node=2, master_port=free_port())))
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "localhost",
           "SLURM_NTASKS": "2", "SLURM_JOB_ID": "7", "SCONTROL_LOG": str(tmp_path / "scontrol.log")}  # fmt: skip

    first = subprocess.Popen(
        ["bash", str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    latest = tmp_path / "out" / "checkpoints" / "latest"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and first.poll() is None and not latest.is_file():
        time.sleep(0.02)
    for rank in psutil.Process(first.pid).children(recursive=True):
        if rank.name().startswith("python") and "training.run" in rank.cmdline():
            rank.send_signal(signal.SIGUSR1)  # SLURM's warning before the time limit, to the job's tasks
    output, _ = first.communicate(timeout=120)
    assert first.returncode == 75, output[-2000:]
    assert (tmp_path / "scontrol.log").read_text() == "requeue 7\n"
    assert not (tmp_path / "out" / "result.json").exists()

    again = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    state = json.loads((tmp_path / "out" / "checkpoints" / "step-00000040" / "checkpoint.json").read_text())
    assert result["steps"] == 40 and state["world_size"] == 2


def test_hostfile_is_built_from_the_slurm_allocation(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_in = '#!/bin/bash\n[ "$*" = "show hostnames node-[1-2]" ] && printf "node-1\\nnode-2\\n"\n'
    (bin_dir / "scontrol").write_text(stand_in)
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "node-[1-2]")
    path = hostfile_from_slurm(tmp_path / "run" / "hostfile", 8)
    assert path.read_text() == "node-1 slots=8\nnode-2 slots=8\n"
    assert read_hostfile(path) == {"node-1": 8, "node-2": 8}


def test_from_slurm_outside_an_allocation_is_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "SLURM_JOB_NODELIST"}
    proc = subprocess.run([GPT1, "launch", "hosts", str(CONFIGS / "tiny.yaml"), "--from-slurm", "--set",
                           f"run.out_dir={tmp_path}"], capture_output=True, text=True, env=env)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: --from-slurm: SLURM_JOB_NODELIST is not set; run inside an allocation "
                                   "(salloc or sbatch)")  # fmt: skip


def test_the_gpu_check_script_parses_and_names_its_modes():
    script = str(ROOT / "bench" / "gpu.sh")
    assert subprocess.run(["bash", "-n", script]).returncode == 0
    proc = subprocess.run([script, "--bogus"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip() == "usage: bench/gpu.sh [--prepare | --dry-run]"
