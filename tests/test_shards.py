"""Token shards: build, format, verify, rebuild, resume; the training reader and sampler."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.documents import doc_files, read_texts
from pipeline.shard_format import HEADER_BYTES, MAGIC, VERSION, ShardFormatError, ShardWriter, open_tokens, read_header
from pipeline.shards import _layout, _shard_writer
from tests.conftest import GPT1, build_shards, built
from tokenizer.bpe import BPETokenizer
from training.data import Sampler, TokenWindows, permuted


def expected_stream(manifest: dict, split: str) -> np.ndarray:
    """The split's documents encoded one by one, each followed by the end-of-document token."""
    tok = BPETokenizer.load(manifest["inputs"]["tokenizer"]["dir"])
    files = doc_files(Path(manifest["inputs"]["data"]["dir"]) / split)
    return np.array([t for text in read_texts(files) for t in [*tok.encode(text), tok.specials.eod]])


def shard_stream(folder: Path, split: str) -> np.ndarray:
    index = json.loads((folder / "index.json").read_text())
    return np.concatenate([np.fromfile(folder / s["file"], dtype=np.uint16, offset=HEADER_BYTES)
                           for s in index["splits"][split]["shards"]])  # fmt: skip


@pytest.fixture
def shards(tiny_shards) -> tuple[Path, dict]:
    return tiny_shards


def test_shards_reproduce_the_documents_token_stream(shards):
    folder, manifest = shards
    for split in ("train", "val"):
        assert np.array_equal(shard_stream(folder, split), expected_stream(manifest, split))


def test_windows_are_the_stream_with_targets_shifted_by_one(shards):
    folder, _ = shards
    windows = TokenWindows(folder, "train")
    first = np.fromfile(folder / "train/shard-00000.bin", dtype=np.uint16, offset=HEADER_BYTES)
    x, y = windows.batch([0, 1])
    assert x.shape == (2, 128) and str(x.dtype) == "torch.int64"
    assert np.array_equal(x[1].numpy(), first[128:256]) and np.array_equal(y[1].numpy(), first[129:257])
    per_shard = [(s - 1) // 128 for s in (200_000, 200_000, 94_533)]
    assert len(windows) == sum(per_shard)
    second = np.fromfile(folder / "train/shard-00001.bin", dtype=np.uint16, offset=HEADER_BYTES)
    assert np.array_equal(windows[per_shard[0]], second[:129])  # windows never straddle two shards


def test_header_index_and_manifest_describe_every_shard(shards):
    folder, manifest = shards
    index = json.loads((folder / "index.json").read_text())
    assert index["dtype"] == "uint16" and index["seq_len"] == 128 and index["format"] == VERSION
    tok = BPETokenizer.load(manifest["inputs"]["tokenizer"]["dir"])
    assert index["vocab_size"] == tok.vocab_size and index["eod"] == tok.specials.eod
    train = index["splits"]["train"]
    assert [s["tokens"] for s in train["shards"]] == [200_000, 200_000, 94_533]
    assert (
        train["documents"] == sum(s["documents"] for s in train["shards"]) == manifest["splits"]["train"]["documents"]
    )
    data = json.loads((Path(manifest["inputs"]["data"]["dir"]) / "manifest.json").read_text())
    assert (
        train["documents"] == data["counts"]["train"] and index["splits"]["val"]["documents"] == data["counts"]["val"]
    )
    for shard in train["shards"]:
        raw = (folder / shard["file"]).read_bytes()
        assert raw[:8] == MAGIC
        header = read_header(folder / shard["file"])
        assert (header.itemsize, header.vocab_size, header.tokens) == (2, tok.vocab_size, shard["tokens"])
        assert len(raw) == HEADER_BYTES + 2 * shard["tokens"]
        assert {"path": shard["file"], "sha256": shard["sha256"], "bytes": len(raw)} in manifest["files"]
    assert manifest["index"]["tokenizer"]["sha256"]


def verify(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([GPT1, "shards", "verify", str(folder)], capture_output=True, text=True)


def test_verify_passes_intact_shards_and_names_a_truncated_or_flipped_one(shards, tmp_path):
    folder, _ = shards
    assert verify(folder).returncode == 0
    for fault, damage in (("truncated", lambda raw: raw[:-3]), ("flipped", lambda raw: raw[:5000] +
                          bytes([raw[5000] ^ 0x40]) + raw[5001:])):  # fmt: skip
        copy = tmp_path / fault
        shutil.copytree(folder, copy)
        shard = copy / "train/shard-00001.bin"
        shard.write_bytes(damage(shard.read_bytes()))
        proc = verify(copy)
        assert proc.returncode == 1
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and str(shard) in lines[0]
        assert ("bytes" in lines[0]) if fault == "truncated" else ("sha256" in lines[0])


def test_verify_rejects_ids_beyond_the_vocabulary(shards, tmp_path):
    folder, _ = shards
    copy = tmp_path / "big-id"
    shutil.copytree(folder, copy)
    index = json.loads((copy / "index.json").read_text())
    index["vocab_size"] = 100  # as if built with a smaller tokenizer
    (copy / "index.json").write_text(json.dumps(index))
    proc = verify(copy)
    assert proc.returncode == 1 and "vocabulary" in proc.stderr


def test_build_is_identical_whatever_the_number_of_workers(shards, tiny_out, ray_address):
    """The reference was built by one worker per CPU of the suite's 2-CPU cluster; this by one."""
    folder, _ = shards
    reference = (folder / "index.json").read_text()
    shutil.rmtree(folder.parent / "cache")
    again, manifest = built(build_shards(tiny_out, ray_address, "--force", "--set", "shards.num_workers=1"))
    assert again == folder and manifest["encoded"]["reused"] == 0
    assert (folder / "index.json").read_text() == reference


def test_a_new_tokenizer_reencodes_everything(shards, tiny_out, ray_address):
    _, manifest = shards
    files = manifest["encoded"]["files"] + manifest["encoded"]["reused"]
    _, retok = built(build_shards(tiny_out, ray_address, "--set", "tokenizer.merges=1900"))
    assert retok["encoded"] == {"files": files, "reused": 0}


def test_new_data_reencodes_only_the_document_files_that_changed(shards, tiny_out, ray_address):
    folder, manifest = shards
    fixed = ["--set", f"tokenizer.path={manifest['inputs']['tokenizer']['dir']}"]
    same = build_shards(tiny_out, ray_address, *fixed)
    assert built(same)[0] == folder and "shards: skipped" in same.stderr  # same token ids: nothing to do

    # Dropping a few short documents changes only the document files that held them.
    cache = folder.parent / "cache"
    stray = cache / "0123abcd.bin"  # as left by a build folder since removed
    stray.write_bytes(b"tokens")
    _, recleaned = built(build_shards(tiny_out, ray_address, *fixed, "--set", "data.clean.min_words=40"))
    assert not stray.exists()  # no build lists it
    assert set(json.loads((folder / "streams.json").read_text())) <= {p.name for p in cache.iterdir()}
    old = json.loads((Path(manifest["inputs"]["data"]["dir"]) / "manifest.json").read_text())
    new = json.loads((Path(recleaned["inputs"]["data"]["dir"]) / "manifest.json").read_text())
    old_files = {f["path"]: f["sha256"] for f in old["files"] if f["path"].startswith(("train/", "val/"))}
    new_files = {f["path"]: f["sha256"] for f in new["files"] if f["path"].startswith(("train/", "val/"))}
    changed = sum(old_files.get(p) != sha for p, sha in new_files.items())
    assert 0 < changed < len(new_files)
    assert recleaned["encoded"] == {"files": changed, "reused": len(new_files) - changed}


def test_killed_build_resumes_from_the_encoded_files(tiny_out, ray_address):
    args = ["--set", "tokenizer.merges=1700", "--set", "shards.num_workers=1"]
    cache = tiny_out / "tiny" / "shards" / "cache"
    before = set(cache.glob("*.bin")) if cache.exists() else set()
    cmd = [GPT1, "shards", "build", "configs/tiny.yaml", "--set", f"run.out_dir={tiny_out}", "--ray-address",
           ray_address, *args]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while len(set(cache.glob("*.bin")) - before) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    folder, manifest = built(build_shards(tiny_out, ray_address, *args))
    assert manifest["encoded"]["reused"] >= 2
    for split in ("train", "val"):
        assert np.array_equal(shard_stream(folder, split), expected_stream(manifest, split))
    assert verify(folder).returncode == 0


def test_inspect_shows_counts_histogram_and_a_decoded_sample(shards):
    folder, _ = shards
    proc = subprocess.run([GPT1, "shards", "inspect", str(folder)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "train: 494,533 tokens, 366 documents, 3 shards" in proc.stderr.replace("\n", " ")
    assert "sample" in proc.stderr and "assert" in proc.stderr


def test_not_a_shards_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ShardFormatError, match="not a shards folder"):
        TokenWindows(tmp_path)
    proc = verify(tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {tmp_path}: not a shards folder (no index.json)"


# The sampler ------------------------------------------------------------------------------------


def epoch_batches(n: int, global_batch: int, world: int, seed: int = 7) -> list[list[list[int]]]:
    """Per rank, the batches of one epoch."""
    ranks = [Sampler(n, global_batch, seed, rank, world) for rank in range(world)]
    steps = ranks[0].steps_per_epoch
    return [[s.next_batch() for _ in range(steps)] for s in ranks]


@pytest.mark.parametrize("world", [1, 2, 4])
def test_sampler_covers_an_epoch_once_with_disjoint_ranks(world):
    n, global_batch = 1000, 64
    per_rank = epoch_batches(n, global_batch, world)
    seen = [i for batches in per_rank for batch in batches for i in batch]
    assert all(len(b) == global_batch // world for batches in per_rank for b in batches)
    assert len(seen) == len(set(seen)) == (n // global_batch) * global_batch
    assert all(0 <= i < n for i in seen)


def test_sampler_order_depends_on_seed_and_epoch_not_on_world_size():
    one = epoch_batches(1000, 64, 1)[0]
    two = epoch_batches(1000, 64, 2)
    assert [sorted(a + b) for a, b in zip(*two)] == [sorted(b) for b in one]
    assert epoch_batches(1000, 64, 1, seed=8)[0] != one
    s = Sampler(1000, 64, 7)
    first = [s.next_batch() for _ in range(s.steps_per_epoch)]
    second = s.next_batch()
    assert s.epoch == 1 and second != first[0]


@pytest.mark.parametrize(("before", "after"), [(1, 1), (2, 1), (1, 2), (2, 4)])
def test_sampler_resumes_mid_epoch_with_the_next_batch_on_any_world_size(before, after):
    n, global_batch, steps = 1000, 64, 5
    reference = Sampler(n, global_batch, 3)
    expected = [sorted(reference.next_batch()) for _ in range(12)]

    ranks = [Sampler(n, global_batch, 3, r, before) for r in range(before)]
    done = [sorted(i for s in ranks for i in s.next_batch()) for _ in range(steps)]
    state = json.loads(json.dumps(ranks[0].state_dict()))  # as stored in a checkpoint
    resumed = [Sampler(n, global_batch, 3, r, after) for r in range(after)]
    for s in resumed:
        s.load_state_dict(state)
    rest = [sorted(i for s in resumed for i in s.next_batch()) for _ in range(12 - steps)]
    assert done + rest == expected


@pytest.mark.parametrize("n", [1, 2, 3, 64, 1000, 4097])
def test_permuted_is_a_permutation_that_depends_on_the_seed(n):
    order = permuted(np.arange(n), n, (7, 0)).tolist()
    assert sorted(order) == list(range(n))
    if n > 3:
        assert order != list(range(n)) and order != permuted(np.arange(n), n, (7, 1)).tolist()


def test_sampler_holds_nothing_per_window():
    """500M windows is 250B tokens of 512-token windows: a batch is computed, not looked up."""
    s = Sampler(500_000_000, 512, 3, rank=3, world_size=8)
    batch = s.next_batch()
    assert len(set(batch)) == 64 and all(0 <= i < 500_000_000 for i in batch)
    assert not any(isinstance(v, np.ndarray) for v in vars(s).values())


def test_sampler_refuses_a_state_from_other_data_or_batch():
    state = Sampler(1000, 64, 3).state_dict()
    with pytest.raises(ValueError, match="global_batch=64"):
        Sampler(1000, 32, 3).load_state_dict(state)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        Sampler(10, 64, 3)
    with pytest.raises(ValueError, match="does not divide"):
        Sampler(1000, 64, 3, 0, 3)


def test_the_training_reader_and_the_tokenizer_need_neither_ray_nor_the_cli():
    code = ("import sys, training.data, tokenizer.bpe, tokenizer.train; "
            "print(sorted(m for m in ('ray', 'launch', 'pipeline.parallel') if m in sys.modules))")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr


def test_packing_cuts_the_concatenated_streams_into_shards_whatever_their_boundaries(tmp_path):
    eod, lengths = 9, [5, 0, 12, 1]
    streams, everything = [], []
    for i, n in enumerate(lengths):
        tokens = np.array([(i * 7 + t) % eod if t != n - 1 else eod for t in range(n)], np.uint32)
        writer = ShardWriter(tmp_path / f"stream-{i}.bin", vocab_size=10)
        writer.write(tokens)
        writer.close()
        streams.append(writer.path)
        everything += tokens.tolist()
    items = _layout(streams, tmp_path / "train", shard_tokens=4)
    written = [_shard_writer(10, eod)(item) for item in items]
    assert [w["tokens"] for w in written] == [4, 4, 4, 4, 2]
    packed = [t for item in items for t in open_tokens(Path(item["path"])).tolist()]
    assert packed == everything
    assert sum(w["documents"] for w in written) == everything.count(eod) == 3
    assert _layout([], tmp_path / "val", shard_tokens=4) == []
