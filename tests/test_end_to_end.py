"""`gpt1 run` from raw text to the report on a miniature config: a run killed during pretraining
completes when rerun, every stage is done, the report scores every task, and a rerun skips everything."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import GPT1

MINIATURE = """
run: {name: mini, seed: 1}
data:
  sources: [{name: builtin, kind: builtin, limit: 240}]
  val_fraction: 0.1
  clean: {min_chars: 200, min_words: 30, max_duplicate_ngrams: {5: 0.4, 7: 0.35, 10: 0.3}}
  dedup: {near: false}
tokenizer: {merges: 300}
shards: {seq_len: 64, shard_tokens: 50000}
model: {preset: debug, n_positions: 64}
train: {global_batch: 8, micro_batch: 8, max_steps: 30, lr: 1.0e-3, warmup_steps: 2, log_every: 2, eval_every: 10,
        eval_batches: 2, checkpoint_every: 5}
eval:
  tasks: [{name: proxy_shuffle}, {name: proxy_next}]
  epochs: 1
  batch_size: 8
  micro_batch: 8
  lr: 1.0e-3
report: {title: Miniature run}
"""
STAGES = ["data", "tokenizer", "shards", "pretrain", "eval", "report"]


def gpt1_run(config: Path, out: Path, ray_address: str, *args: str) -> list[str]:
    return [GPT1, "run", str(config), "--set", f"run.out_dir={out}", "--ray-address", ray_address, *args]


def test_a_run_killed_during_pretraining_completes_to_a_report_then_skips_everything(ray_address, tmp_path):
    """About a minute on 2 cores: the whole mission runs as the user runs it, three `gpt1 run`
    processes (killed, rerun, skipped), each starting the CLI, DeepSpeed's launcher and its rank."""
    config, out = tmp_path / "mini.yaml", tmp_path / "out"
    config.write_text(MINIATURE)
    env = {**os.environ, "COLUMNS": "250"}
    pretrain, log = out / "mini" / "pretrain", tmp_path / "killed.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen(gpt1_run(config, out, ray_address), stdout=subprocess.DEVNULL, stderr=stderr,
                                env=env, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None and not list(pretrain.glob("*/checkpoints/latest")):
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    (folder,) = [p for p in pretrain.iterdir() if p.is_dir()]
    assert not (folder / "manifest.json").exists(), "pretraining finished before it was killed"
    assert all(f"{name}: done in" in log.read_text() for name in STAGES[:3]), log.read_text()

    proc = subprocess.run(gpt1_run(config, out, ray_address), capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resumed from {folder / 'checkpoints'}" in " ".join(proc.stderr.split())
    assert json.loads((folder / "result.json").read_text())["steps"] == 30
    html = Path(proc.stdout.strip().splitlines()[-1])
    assert html.name == "report.html" and html.is_file()
    stages = json.loads((out / "mini" / "stages.json").read_text())
    assert sorted(stages) == sorted(STAGES)
    for name in STAGES:
        manifest = json.loads((Path(stages[name]["dir"]) / "manifest.json").read_text())
        assert manifest["stage"] == name
        assert stages[name]["status"] == ("skipped" if name in STAGES[:3] else "done")  # done by the killed run
    for name, summary in (("data", r"documents kept"), ("pretrain", r"30 steps, val perplexity [\d.]+"),
                          ("eval", r"2 tasks")):  # fmt: skip
        assert re.search(rf"{name}\s.*{summary}", proc.stderr), proc.stderr

    report = (html.parent / "report.md").read_text()
    for task in ("proxy_shuffle", "proxy_next"):
        assert re.search(rf"^\| {task} \| accuracy \| dev \| \d+ \| \d+\.\d \| - \|$", report, re.MULTILINE), report
    assert "![Training and validation loss](figure-1.png)" in report and (html.parent / "figure-1.png").is_file()
    page = html.read_text()
    assert page.count("data:image/png;base64,") == 4 and "<table>" in page and "src='figure" not in page

    manual = subprocess.run([GPT1, "report", str(out / "mini")], capture_output=True, text=True)
    assert manual.returncode == 0 and manual.stdout.strip() == str(out / "mini/report/latest/report.html")
    assert "Miniature run" in Path(manual.stdout.strip()).read_text()  # the run's report settings are kept

    again = subprocess.run(gpt1_run(config, out, ray_address), capture_output=True, text=True, env=env)
    assert again.returncode == 0 and Path(again.stdout.strip().splitlines()[-1]) == html
    assert [f"{name}: skipped" in " ".join(again.stderr.split()) for name in STAGES] == [True] * len(STAGES)


def test_report_of_a_folder_that_is_not_a_run_is_one_line(tmp_path):
    proc = subprocess.run([GPT1, "report", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {tmp_path}: not a run folder (no stages.json)"
