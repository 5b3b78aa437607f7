"""`gpt1 doctor`: passes on this CPU host with a real 2-process all-reduce; fails clearly when a
requirement is missing."""

from __future__ import annotations

import os
import subprocess

from launch import doctor
from tests.conftest import GPT1


def run_doctor(tmp_path, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([GPT1, "doctor", "--nproc", "2", "--out-dir", str(tmp_path)], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})  # fmt: skip


def rows(output: str) -> dict[str, str]:
    """check name -> its result cell, from the printed table."""
    found = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) == 3 and cells[1] in ("pass", "FAIL"):
            found[cells[0]] = f"{cells[1]} {cells[2]}"
    return found


def test_doctor_passes_on_cpu_with_an_all_reduce_across_two_processes(tmp_path):
    proc = run_doctor(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = rows(proc.stderr)
    assert list(found) == ["python", "torch", "GPUs", "deepspeed", "disk", "all-reduce"]
    assert all(r.startswith("pass") for r in found.values())
    assert found["all-reduce"] == "pass across 2 processes (gloo)"


def test_doctor_fails_clearly_without_deepspeed(tmp_path):
    fake = tmp_path / "fake" / "deepspeed"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('deepspeed is broken here')\n")
    proc = run_doctor(tmp_path, env={"PYTHONPATH": str(tmp_path / "fake")})
    assert proc.returncode == 1
    found = rows(proc.stderr)
    assert found["deepspeed"] == "FAIL cannot import (deepspeed is broken here): pip install deepspeed"
    assert found["all-reduce"] == "FAIL not tried: fix the failures above first"


def test_too_little_free_disk_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(doctor, "MIN_FREE_GB", 1e12)
    check = doctor.disk_check(tmp_path / "not-yet" / "runs")
    assert not check.ok and check.detail.endswith("at least 1000000000000 GiB is needed")
    assert f"free at {tmp_path}" in check.detail
