"""The data stage end to end on Ray: accounting, dedup, split, determinism, resume, a real cluster."""

from __future__ import annotations

import json
import os
import pydoc_data.topics
import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from launch.config import load_config
from launch.stages import data_stage
from pipeline.config import DataConfig, SourceConfig
from pipeline.data_stage import _clean_partition, _part_path
from pipeline.data_stage import run_data as pipeline_run_data
from pipeline.runner import Runner, StageOutcome, read_manifest
from pipeline.sources import plan
from tests.conftest import CONFIGS, GPT1

TOPICS = [t for _, t in sorted(pydoc_data.topics.topics.items()) if len(t) > 3000][:12]


def make_corpus(root: Path, topics: list[str] = TOPICS) -> Path:
    """Two sources in real formats, with every kind of fault and both kinds of duplicate."""
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    lines = [json.dumps({"text": t, "title": f"topic {i}"}) for i, t in enumerate(topics[:-3])]
    words = topics[0].split()
    words[len(words) // 2] = "CHANGED"
    lines += [
        json.dumps({"text": "  " + topics[1].upper().replace(" ", "   ")}),  # exact duplicate once normalised
        json.dumps({"text": " ".join(words)}),  # near duplicate of the first document
        '{"text": "broken',  # malformed
        json.dumps({"body": "no text field"}),
        json.dumps({"text": "Too short."}),
    ]
    (root / "a" / "docs.jsonl").write_text("\n".join(lines) + "\n")
    for i, text in enumerate(topics[-3:]):
        (root / "b" / f"doc{i}.txt").write_text(text)
    (root / "b" / "empty.txt").write_bytes(b"")
    (root / "b" / "blob.txt").write_bytes(b"\x00\x01\x02binary" * 100)
    return root


def corpus_config(root: Path, write_config, extra: str = "") -> Path:
    return write_config(
        f"""
run: {{name: t, out_dir: {root / "runs"}}}
data:
  sources:
    - {{name: json, paths: ["{root}/a/*.jsonl"]}}
    - {{name: text, paths: ["{root}/b/*"], format: txt}}
  val_fraction: 0.3
  dedup: {{near: true}}
  clean: {{mean_word_length: null, min_alpha_words: 0.5, max_symbol_ratio: 1.0, max_duplicate_lines: null,
           max_top_ngram: {{}}, max_duplicate_ngrams: {{}}}}
{extra}
"""
    )


def run_data(path: Path, *overrides: str):
    cfg = load_config(path, list(overrides))
    (outcome,) = Runner(cfg.run_dir).run([data_stage(cfg)])
    return outcome


def rows(folder: Path, split: str) -> list[dict]:
    return [r for f in sorted((folder / split).glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


class Corpus(NamedTuple):
    config: Path
    outcome: StageOutcome  # the data stage's run on it, with the default settings


@pytest.fixture(scope="module")
def corpus(ray_address, tmp_path_factory) -> Corpus:
    """make_corpus's data stage, run once in this process on the suite's cluster; the tests that
    need another run compare theirs with it."""
    root = make_corpus(tmp_path_factory.mktemp("corpus"))

    def write(text: str) -> Path:
        (root / "cfg.yaml").write_text(text)
        return root / "cfg.yaml"

    config = corpus_config(root, write)
    return Corpus(config, run_data(config))


def test_every_document_is_kept_rejected_or_a_duplicate(corpus):
    outcome = corpus.outcome
    counts = outcome.manifest["counts"]
    json_src, text_src = counts["sources"]["json"], counts["sources"]["text"]
    assert json_src == {"in": 14, "kept": 9, "train": json_src["train"], "val": json_src["val"], "duplicates": 2,
                        "rejected": {"malformed_json": 1, "missing_field": 1, "too_short": 1}}  # fmt: skip
    assert text_src["in"] == 5 and text_src["kept"] == 3
    assert text_src["rejected"] == {"binary_file": 1, "empty_file": 1}
    assert counts["in"] == 19 and counts["kept"] == 12 and counts["train"] + counts["val"] == 12

    rejects = {r["reason"]: r for r in rows(outcome.dir, "rejects")}
    assert rejects["malformed_json"]["detail"].startswith("line 12:")
    assert rejects["exact_duplicate"]["detail"].endswith("docs.jsonl:2")
    assert rejects["near_duplicate"]["detail"].endswith("docs.jsonl:1")
    kept = rows(outcome.dir, "train") + rows(outcome.dir, "val")
    assert len({r["id"] for r in kept}) == 12
    assert {json.loads(r["meta"]).get("title") for r in kept if r["source"] == "json"} >= {"topic 0", "topic 1"}


def test_split_is_chosen_by_text_so_reruns_and_sources_agree(corpus, tmp_path):
    first = corpus.outcome
    again = run_data(corpus.config, f"run.out_dir={tmp_path / 'other'}")
    assert {r["id"] for r in rows(first.dir, "val")} == {r["id"] for r in rows(again.dir, "val")}
    assert 0 < len(rows(first.dir, "val")) < 12


def test_output_is_identical_whatever_the_number_of_workers(corpus, tmp_path):
    assert load_config(corpus.config).data.num_workers is None, "the default: one per CPU, 2 on the suite's cluster"
    one = run_data(corpus.config, "data.num_workers=1", f"run.out_dir={tmp_path / 'w1'}")
    assert one.dir.name == corpus.outcome.dir.name, "worker count is not part of the stage's identity"
    assert one.manifest["files"] == corpus.outcome.manifest["files"]


def test_limit_caps_each_source_in_order(ray_address, tmp_path, write_config):
    root = make_corpus(tmp_path)
    outcome = run_data(corpus_config(root, write_config), "data.sources.1.limit=2")
    text = outcome.manifest["counts"]["sources"]["text"]
    assert text["in"] == 2, "blob.txt and doc0.txt are the first two files in order"
    assert text["rejected"] == {"binary_file": 1} and text["kept"] == 1


def test_missing_path_is_one_clear_error_before_any_work(tmp_path, write_config):
    cfg = write_config(
        f"run: {{out_dir: {tmp_path}}}\ndata: {{sources: [{{name: a, paths: [{tmp_path}/nope/*.txt]}}]}}\n"
    )
    proc = subprocess.run(
        [GPT1, "data", str(cfg)], capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"}
    )
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: data.sources[a]: no file matches '{tmp_path}/nope/*.txt'"], proc.stderr
    assert not list(tmp_path.glob("default/data/*/train"))


def test_cluster_at_ray_address_gives_the_local_default_output(corpus, tmp_path):
    """The suite's cluster (the fixture's run) against `gpt1 data` starting a local Ray of its own."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([GPT1, "data", str(corpus.config), "--set", f"run.out_dir={tmp_path / 'local'}"],
                          capture_output=True, text=True, env=env, timeout=240)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "rejected: malformed_json" in proc.stderr + proc.stdout
    cluster, local = corpus.outcome.manifest, read_manifest(Path(proc.stdout.strip().splitlines()[-1]))
    assert cluster["files"] == local["files"] and cluster["counts"] == local["counts"]


def test_killed_run_resumes_to_the_same_output(ray_address, tmp_path, write_config):
    topics = [t for _, t in sorted(pydoc_data.topics.topics.items()) if len(t) > 1500]
    root = make_corpus(tmp_path, topics)
    for i in range(40):  # enough text that the kill lands in the middle
        (root / "b" / f"more{i:02d}.txt").write_text(topics[i % len(topics)] + f"\n\nCopy {i}.")
    cfg = corpus_config(root, write_config, "  num_workers: 1\n  partition_bytes: 100000")  # several partitions
    proc = subprocess.Popen([GPT1, "data", str(cfg), "--ray-address", ray_address],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and not list((root / "runs").glob("t/data/*/work/part-*.parquet")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    (folder,) = (root / "runs" / "t" / "data").glob("*/")
    assert read_manifest(folder) is None and list(folder.glob("work/part-*.parquet")), "killed mid-run"

    resumed = run_data(cfg)
    fresh = run_data(cfg, f"run.out_dir={tmp_path / 'fresh'}")
    assert resumed.dir == folder
    assert resumed.manifest["files"] == fresh.manifest["files"]
    assert resumed.manifest["counts"] == fresh.manifest["counts"]
    assert not (folder / "work").exists()


@pytest.mark.timeout(300)
def test_tiny_config_data_stage_runs_from_the_command_line(tiny_out):
    """tiny_out is the suite's `gpt1 data configs/tiny.yaml`; the same config finds its output by key."""
    outcome = run_data(CONFIGS / "tiny.yaml", f"run.out_dir={tiny_out}")
    assert outcome.status == "skipped"
    counts = outcome.manifest["counts"]
    assert counts["kept"] > 300 and counts["sources"]["builtin"]["in"] > 600


def test_an_added_or_edited_file_changes_the_key_and_is_read(ray_address, tmp_path, write_config):
    root = tmp_path / "in"
    root.mkdir()
    write_jsonl(root / "a.jsonl", TOPICS[:4])
    cfg = write_config(f"run: {{name: t, out_dir: {tmp_path / 'runs'}}}\n"
                       f"data: {{sources: [{{name: s, paths: ['{root}/*.jsonl']}}], val_fraction: 0.0}}\n")  # fmt: skip
    first = run_data(cfg)
    write_jsonl(root / "b.jsonl", TOPICS[4:6])
    added = run_data(cfg)
    assert added.status == "done" and added.dir != first.dir
    assert added.manifest["counts"]["in"] == 6
    write_jsonl(root / "b.jsonl", TOPICS[4:7])
    edited = run_data(cfg)
    assert edited.status == "done" and edited.dir not in (first.dir, added.dir)
    assert edited.manifest["counts"]["in"] == 7
    assert run_data(cfg).status == "skipped"


def test_work_left_for_other_files_is_never_reused(ray_address, tmp_path):
    """Files a and c are cleaned and the run is killed; b is added and the run resumes in the same
    folder. c's work file was partition 1 and b is partition 1 now: b's documents must all be read."""
    root = tmp_path / "in"
    root.mkdir()
    write_jsonl(root / "a.jsonl", TOPICS[:4])
    write_jsonl(root / "c.jsonl", TOPICS[4:8])
    cfg = DataConfig(sources=[SourceConfig(name="s", paths=[f"{root}/*.jsonl"])], val_fraction=0.0,
                     partition_bytes=50_000)  # one partition per file (34, 31 and 86 kB)  # fmt: skip
    assert [len(p.pieces) for p in plan(cfg)] == [1, 1]
    out = tmp_path / "out"
    (out / "work").mkdir(parents=True)
    for part in plan(cfg):  # what a kill after pass 1 leaves behind
        _clean_partition(part, cfg, _part_path(out / "work", part))

    write_jsonl(root / "b.jsonl", TOPICS[8:10])
    summary = pipeline_run_data(cfg, out)
    assert summary["counts"]["in"] == 10
    ids = [r["id"] for split in ("train", "rejects") for r in rows(out, split)]
    assert Counter(i.rsplit(":", 1)[0] for i in ids) == {str(root / "a.jsonl"): 4, str(root / "b.jsonl"): 2,
                                                         str(root / "c.jsonl"): 4}  # fmt: skip


def write_jsonl(path: Path, texts: list[str]) -> None:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))


def write_sentence_parquet(root: Path, texts: list[str], files: int = 2) -> int:
    """A folder laid out like `bookcorpus/bookcorpus` on the hub: `plain_text/train-*.parquet`, one
    `text` column, one lower-cased sentence per row, in book order, no book ids. Returns the rows."""
    sentences = [s.strip().lower() + " ." for t in texts for s in t.replace("\n", " ").split(". ") if s.strip()]
    (root / "plain_text").mkdir(parents=True)
    size = -(-len(sentences) // files)
    for i in range(files):
        table = pa.table({"text": sentences[i * size : (i + 1) * size]})
        pq.write_table(table, root / "plain_text" / f"train-{i:05d}-of-{files:05d}.parquet", row_group_size=100)
    return len(sentences)


def test_sentence_rows_are_joined_into_documents_the_default_rules_can_judge(ray_address, tmp_path, write_config):
    books = [t for _, t in sorted(pydoc_data.topics.topics.items()) if len(t) > 1500]
    rows_in = write_sentence_parquet(tmp_path / "bookcorpus", books)
    paths = f"['{tmp_path}/bookcorpus/plain_text/*.parquet']"
    base = f"run: {{name: t, out_dir: {tmp_path / 'runs'}}}\ndata: {{sources: [{{name: books, paths: {paths}"
    by_row = run_data(write_config(base + "}]}\n", "rows.yaml"))
    joined = run_data(write_config(base + ", join: {words: 400}}]}\n", "joined.yaml"))

    assert by_row.manifest["counts"]["in"] == rows_in and by_row.manifest["counts"]["kept"] < rows_in // 20
    counts = joined.manifest["counts"]
    steps = joined.manifest["steps"]["books"]
    assert steps["join.rows"] == rows_in and steps["join.documents"] == counts["in"] < rows_in // 10
    assert counts["in"] == counts["kept"] + counts["duplicates"] + sum(counts["rejected"].values())
    assert counts["kept"] > counts["in"] // 2, counts["rejected"]
    for doc in rows(joined.dir, "train") + rows(joined.dir, "val"):
        path, first, last = re.fullmatch(r"(.*\.parquet):(\d+)-(\d+)", doc["id"]).groups()
        column = pq.read_table(path).column("text").to_pylist()
        sentences = column[int(first) - 1 : int(last)]
        words = [len(s.split()) for s in sentences]
        assert [len(line.split()) for line in doc["text"].split("\n")] == words  # a line per row, as cleaned
        assert json.loads(doc["meta"])["rows"] == len(sentences)
        assert sum(words[:-1]) < 400 and (sum(words) >= 400 or int(last) == len(column)), "closed at 400 words"
