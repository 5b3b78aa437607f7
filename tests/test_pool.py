"""Fine-tunes in worker processes (`eval.pool`): each worker its own GPU or its share of the threads
and a process group of its own, dead with its parent, and the stage's results the same as in one
process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from test_eval_model import documents, tok, write_checkpoint  # noqa: F401 (tok is a fixture)

from eval.config import EvalConfig
from eval.evaluate import run_eval
from eval.pool import Pool
from training.config import ModelConfig


class Probe:
    """A worker's state that says where it runs, in a file named by its process id."""

    def __init__(self, folder: Path):
        facts = {"gpu": os.environ.get("CUDA_VISIBLE_DEVICES"), "threads": torch.get_num_threads(),
                 "rank": os.environ.get("RANK"), "parent": os.getppid()}  # fmt: skip
        (folder / f"{os.getpid()}.json").write_text(json.dumps(facts))

    def pid(self, seconds: float) -> int:
        time.sleep(seconds)
        return os.getpid()


def test_each_worker_takes_a_gpu_of_its_own_or_its_share_of_the_threads(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "3")  # a launcher's process group is not the workers'
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    with Pool(Probe, (tmp_path,), workers=2) as pool:
        jobs = [pool.submit("pid", 1.0) for _ in range(4)]
        pids = {job.result() for job in jobs}
    facts = [json.loads((tmp_path / f"{pid}.json").read_text()) for pid in pids]
    assert sorted(f["gpu"] for f in facts) == ["4", "6"] and {f["rank"] for f in facts} == {None}
    assert {f["parent"] for f in facts} == {os.getpid()}

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    (tmp_path / "cpu").mkdir()
    with Pool(Probe, (tmp_path / "cpu",), workers=2) as pool:
        for job in [pool.submit("pid", 1.0) for _ in range(2)]:
            job.result()
    facts = [json.loads(p.read_text()) for p in (tmp_path / "cpu").glob("*.json")]
    assert [f["threads"] for f in facts] == [max(1, torch.get_num_threads() // 2)] * 2
    assert {f["gpu"] for f in facts} == {None}


def test_workers_die_with_a_killed_parent(tmp_path):
    script = f"""
import sys; sys.path[:0] = {[str(Path(__file__).parent), str(Path(__file__).parent.parent)]!r}
from pathlib import Path
from eval.pool import Pool
from test_pool import Probe
if __name__ == "__main__":
    with Pool(Probe, (Path({str(tmp_path)!r}),), workers=2) as pool:
        [job.result() for job in [pool.submit("pid", 600) for _ in range(2)]]
"""
    parent = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("*.json"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    workers = [int(p.stem) for p in tmp_path.glob("*.json")]
    assert len(workers) == 2
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in workers)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited; only its (killed) parent would have reaped it


def test_the_stage_scores_the_same_on_two_workers_as_in_one_process(tok, tmp_path, monkeypatch):  # noqa: F811
    """Each run is seeded by itself, so where it runs changes nothing (with the same threads per run)."""
    data = tmp_path / "data"
    (data / "val").mkdir(parents=True)
    texts = documents(copies=2)
    pq.write_table(pa.table({"id": [str(i) for i in range(len(texts))], "text": texts}),
                   data / "val" / "part-00000.parquet")  # fmt: skip
    cfg = ModelConfig(preset="debug", vocab_size=tok.vocab_size, n_positions=64)
    checkpoint = write_checkpoint(tmp_path / "step-00000000", tok, cfg)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what each of two workers gets on two cores
    try:
        results = {}
        for workers in (1, 2):
            ecfg = EvalConfig(tasks=[{"name": "proxy_shuffle"}, {"name": "proxy_order"}], lr=1e-3, batch_size=16,
                              micro_batch=16, epochs=1, seeds=[0, 1], workers=workers)  # fmt: skip
            run_eval(ecfg, checkpoint, data, tmp_path / str(workers))
            results[workers] = [json.loads((tmp_path / str(workers) / t / "results.json").read_text())
                                for t in ("proxy_shuffle", "proxy_order")]  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    for one, two in zip(results[1], results[2]):
        assert [r["scores"] for r in one["runs"]] == [r["scores"] for r in two["runs"]]
        assert one["summary"] == two["summary"] and one["train"] == two["train"]
