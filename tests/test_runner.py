"""The stage runner: content-addressed folders, skipping, forcing, and surviving SIGKILL."""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.config import ShardsConfig
from pipeline.runner import MANIFEST, Runner, Stage, StageContext, StageError, read_manifest
from tokenizer.config import TokenizerConfig


def writer(calls: list[str], name: str, text: str = "hello"):
    """A stage function that writes one file and remembers it ran."""

    def fn(ctx: StageContext) -> dict:
        calls.append(name)
        upstream = "".join((p / "out.txt").read_text() for p in ctx.inputs.values())
        (ctx.out_dir / "out.txt").write_text(upstream + text)
        return {"counts": {"docs": 1}}

    return fn


def chain(calls: list[str], tok: TokenizerConfig | None = None, shards: ShardsConfig | None = None) -> list[Stage]:
    tok = tok or TokenizerConfig()
    return [
        Stage("tokenizer", {"tokenizer": tok}, writer(calls, "tokenizer", f"{tok.merges}:")),
        Stage("shards", {"shards": shards or ShardsConfig()}, writer(calls, "shards", "b"), inputs=("tokenizer",)),
    ]


def test_completed_stages_are_skipped_on_rerun(tmp_path: Path):
    calls: list[str] = []
    first = Runner(tmp_path).run(chain(calls))
    second = Runner(tmp_path).run(chain(calls))
    assert calls == ["tokenizer", "shards"]
    assert [o.status for o in first] == ["done", "done"]
    assert [o.status for o in second] == ["skipped", "skipped"]
    assert [o.dir for o in first] == [o.dir for o in second]
    assert (second[1].dir / "out.txt").read_text() == "40000:b"


def test_manifest_records_files_counts_config_and_versions(tmp_path: Path):
    outcome = Runner(tmp_path).run(chain([]))[0]
    manifest = read_manifest(outcome.dir)
    assert manifest["counts"] == {"docs": 1}
    text = b"40000:"
    assert manifest["files"] == [{"path": "out.txt", "bytes": len(text), "sha256": hashlib.sha256(text).hexdigest()}]
    assert manifest["config"]["tokenizer"]["merges"] == 40_000
    assert {"python", "gpt1"} <= manifest["versions"].keys()
    assert manifest["seconds"] >= 0 and manifest["key"] == outcome.dir.name


def test_stages_index_maps_each_stage_to_its_folder_and_status(tmp_path: Path):
    outcomes = Runner(tmp_path).run(chain([]))
    index = json.loads((tmp_path / "stages.json").read_text())
    assert {k: (v["dir"], v["status"]) for k, v in index.items()} == {o.name: (str(o.dir), "done") for o in outcomes}


def test_changing_a_config_value_changes_the_folder_and_downstream(tmp_path: Path):
    calls: list[str] = []
    before = Runner(tmp_path).run(chain(calls))
    after = Runner(tmp_path).run(chain(calls, tok=TokenizerConfig(merges=100)))
    assert calls == ["tokenizer", "shards", "tokenizer", "shards"]
    assert before[0].dir != after[0].dir and before[1].dir != after[1].dir
    assert (after[1].dir / "out.txt").read_text() == "100:b"
    assert (before[1].dir / "out.txt").read_text() == "40000:b", "the old variant stays usable"


def test_upstream_rerun_with_identical_output_keeps_downstream(tmp_path: Path):
    calls: list[str] = []
    before = Runner(tmp_path).run(chain(calls))
    stages = chain(calls)
    stages[0] = Stage("tokenizer", stages[0].config, stages[0].fn, version=2)
    after = Runner(tmp_path).run(stages)
    assert calls == ["tokenizer", "shards", "tokenizer"]
    assert before[0].dir != after[0].dir and after[1].status == "skipped" and after[1].dir == before[1].dir


def test_changing_an_unrelated_section_keeps_the_folder(tmp_path: Path):
    calls: list[str] = []
    before = Runner(tmp_path).run(chain(calls))
    after = Runner(tmp_path).run(chain(calls, shards=ShardsConfig(seq_len=128)))
    assert calls == ["tokenizer", "shards", "shards"]
    assert before[0].dir == after[0].dir and before[1].dir != after[1].dir


def test_fields_that_do_not_change_output_do_not_change_the_folder(tmp_path: Path):
    before = Runner(tmp_path).run(chain([]))
    after = Runner(tmp_path).run(chain([], shards=ShardsConfig(num_workers=7)))
    assert [o.status for o in after] == ["skipped", "skipped"]
    assert before[1].dir == after[1].dir


def test_changed_upstream_output_invalidates_downstream(tmp_path: Path):
    calls: list[str] = []
    first = Runner(tmp_path).run(chain(calls))
    stages = chain(calls)
    stages[0] = Stage("tokenizer", stages[0].config, writer(calls, "tokenizer", "z"), version=2)
    second = Runner(tmp_path).run(stages)
    assert [o.status for o in second] == ["done", "done"]
    assert first[1].dir != second[1].dir
    assert (second[1].dir / "out.txt").read_text() == "zb"


def test_force_reruns_a_complete_stage_in_place(tmp_path: Path):
    calls: list[str] = []
    first = Runner(tmp_path).run(chain(calls))
    again = Runner(tmp_path, force={"shards"}).run(chain(calls))
    assert calls == ["tokenizer", "shards", "shards"]
    assert [o.status for o in again] == ["skipped", "done"] and again[1].dir == first[1].dir


def test_until_stops_after_the_named_stage(tmp_path: Path):
    calls: list[str] = []
    outcomes = Runner(tmp_path).run(chain(calls), until="tokenizer")
    assert calls == ["tokenizer"] and [o.name for o in outcomes] == ["tokenizer"]


@pytest.mark.parametrize("kwargs", [{"until": "shard"}, {}], ids=["until", "force"])
def test_unknown_stage_name_is_a_clear_error(tmp_path: Path, kwargs):
    runner = Runner(tmp_path, force=set() if kwargs else {"tokeniser"})
    with pytest.raises(StageError, match=r"unknown stage (shard|tokeniser); stages: tokenizer, shards"):
        runner.run(chain([]), **kwargs)


def test_failed_stage_is_recorded_and_leaves_no_manifest(tmp_path: Path):
    def broken(ctx: StageContext) -> dict:
        (ctx.out_dir / "part").write_text("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        Runner(tmp_path).run([Stage("data", {}, broken)])
    index = json.loads((tmp_path / "stages.json").read_text())
    assert index["data"]["status"] == "failed"
    assert read_manifest(Path(index["data"]["dir"])) is None


def test_summary_may_not_overwrite_runner_keys(tmp_path: Path):
    with pytest.raises(StageError, match="reserved manifest keys"):
        Runner(tmp_path).run([Stage("data", {}, lambda ctx: {"files": []})])


KILLED_RUN = """
import os, signal, sys
from pathlib import Path
import pipeline.runner as runner
from pipeline.runner import Runner, Stage

point = sys.argv[2]

def fn(ctx):
    (ctx.out_dir / "half.txt").write_text("partial")
    if point == "in-stage":
        os.kill(os.getpid(), signal.SIGKILL)
    return {}

if point == "in-manifest":
    real = runner.os.replace
    def replace(src, dst):
        if Path(dst).name == "manifest.json":
            os.kill(os.getpid(), signal.SIGKILL)
        real(src, dst)
    runner.os.replace = replace

Runner(Path(sys.argv[1])).run([Stage("data", {}, fn)])
"""


@pytest.mark.parametrize("point", ["in-stage", "in-manifest"])
def test_stage_killed_mid_write_is_rerun_not_skipped(tmp_path: Path, point: str):
    script = tmp_path / "killed.py"
    script.write_text(textwrap.dedent(KILLED_RUN))
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "run"), point], capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()
    (folder,) = [p for p in (tmp_path / "run" / "data").iterdir() if p.is_dir()]
    assert (folder / "half.txt").exists() and not (folder / MANIFEST).exists()

    calls: list[str] = []

    def complete(ctx: StageContext) -> dict:
        calls.append("data")
        assert not any(ctx.out_dir.iterdir()), "a non-resumable stage starts from an empty folder"
        (ctx.out_dir / "whole.txt").write_text("complete")
        return {}

    (outcome,) = Runner(tmp_path / "run").run([Stage("data", {}, complete)])
    assert calls == ["data"] and outcome.status == "done" and outcome.dir == folder
    assert [f["path"] for f in read_manifest(folder)["files"]] == ["whole.txt"]
    assert sorted(p.name for p in folder.iterdir()) == [MANIFEST, "whole.txt"]


def test_resumable_stage_keeps_what_an_interrupted_attempt_wrote(tmp_path: Path):
    def interrupted(ctx: StageContext) -> dict:
        (ctx.out_dir / "part-0").write_text("first")
        raise KeyboardInterrupt

    seen: list[list[str]] = []

    def resume(ctx: StageContext) -> dict:
        seen.append(sorted(p.name for p in ctx.out_dir.iterdir()))
        (ctx.out_dir / "part-1").write_text("second")
        return {}

    with pytest.raises(KeyboardInterrupt):
        Runner(tmp_path).run([Stage("shards", {}, interrupted, resumable=True)])
    Runner(tmp_path).run([Stage("shards", {}, resume, resumable=True)])
    assert seen == [["part-0"]]


def test_second_writer_of_the_same_stage_is_refused(tmp_path: Path):
    def reenter(ctx: StageContext) -> dict:
        Runner(tmp_path).run([Stage("data", {}, lambda c: {})])
        return {}

    with pytest.raises(StageError, match="being written by another process"):
        Runner(tmp_path).run([Stage("data", {}, reenter)])


def test_a_stage_finished_by_another_process_while_waiting_for_the_lock_is_not_run_again(tmp_path: Path,
                                                                                        monkeypatch):  # fmt: skip
    import pipeline.runner as runner

    calls: list[str] = []
    real = runner._exclusive

    @contextlib.contextmanager
    def finished_first(lock_path: Path, stage: str):
        monkeypatch.setattr(runner, "_exclusive", real)
        Runner(tmp_path).run([Stage("data", {}, writer(calls, "other"))])  # the other process, first to the lock
        with real(lock_path, stage):
            yield

    monkeypatch.setattr(runner, "_exclusive", finished_first)
    (outcome,) = Runner(tmp_path).run([Stage("data", {}, writer(calls, "this"))])
    assert calls == ["other"] and outcome.status == "skipped"


def test_a_filesystem_without_locks_runs_the_stage_with_a_warning(tmp_path: Path, monkeypatch, caplog):
    import errno
    import fcntl

    def no_locks(*args):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    calls: list[str] = []
    (outcome,) = Runner(tmp_path).run([Stage("data", {}, writer(calls, "data"))])
    assert outcome.status == "done" and calls == ["data"]
    assert "cannot lock" in caplog.text and "No locks available" in caplog.text
