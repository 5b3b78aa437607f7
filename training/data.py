"""Training data: fixed-length windows over token shards, and the order they are read in.

`TokenWindows` maps a split's shards with `numpy.memmap` (no copy, no loading) and serves window
`i` as `seq_len + 1` consecutive tokens: the inputs and, shifted by one, the next-token targets.
Windows do not overlap and never straddle two shards (a shard's last few tokens are unused).

`Sampler` decides which windows each optimizer step reads: one permutation per epoch (seeded by
seed and epoch), cut into global batches; a rank takes its slice of each. The permutation is a
keyed Feistel network, computed for the positions a step needs: nothing is held per window, so
memory is the same at a million windows or at 500 million (250B tokens). Its state is the epoch
and the number of windows the whole job has consumed in it, so a resumed job, on any number of
processes with the same global batch, continues with exactly the next batch: no window is seen
twice in an epoch, and only the last `n % global_batch` are left out of it.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from pipeline.shard_format import ShardFormatError, open_tokens, read_index


class TokenWindows:
    """The `seq_len`-token training windows of one split of a shards folder."""

    def __init__(self, folder: str | Path, split: str = "train", seq_len: int | None = None):
        folder = Path(folder)
        index = read_index(folder)
        if split not in index["splits"]:
            raise ShardFormatError(f"{folder}: no split {split!r} (has {', '.join(index['splits'])})")
        self.seq_len = seq_len or index["seq_len"]
        self.vocab_size = index["vocab_size"]
        self.shards = [open_tokens(folder / s["file"]) for s in index["splits"][split]["shards"]]
        counts = [max(0, (len(tokens) - 1) // self.seq_len) for tokens in self.shards]
        self.starts = np.cumsum([0, *counts]).tolist()  # first window index of each shard

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self):
            raise IndexError(f"window {i} of {len(self)}")
        shard = bisect.bisect_right(self.starts, i) - 1
        at = (i - self.starts[shard]) * self.seq_len
        return self.shards[shard][at : at + self.seq_len + 1]

    def batch(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets, each (len(indices), seq_len) int64."""
        windows = torch.from_numpy(np.stack([self[i] for i in indices]).astype(np.int64))
        return windows[:, :-1], windows[:, 1:]


class Sampler:
    """Which windows each optimizer step reads, per rank; resumable at any step, on any world size."""

    def __init__(self, n: int, global_batch: int, seed: int, rank: int = 0, world_size: int = 1):
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} does not divide over {world_size} processes")
        if n < global_batch:
            raise ValueError(f"{n} windows are fewer than one global batch of {global_batch}")
        self.n, self.global_batch, self.seed = n, global_batch, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.position = 0, 0

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.global_batch

    def next_batch(self) -> list[int]:
        """This rank's windows for the next step (global_batch / world_size of them), and advance."""
        if self.position + self.global_batch > self.n:
            self.epoch, self.position = self.epoch + 1, 0
        per_rank = self.global_batch // self.world_size
        start = self.position + self.rank * per_rank
        self.position += self.global_batch
        return permuted(np.arange(start, start + per_rank), self.n, (self.seed, self.epoch)).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "n": self.n, "global_batch": self.global_batch,
                "seed": self.seed}  # fmt: skip

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue where `state` left off; the data, batch and seed must be the ones it was saved with."""
        for key in ("n", "global_batch", "seed"):
            if state[key] != getattr(self, key):
                raise ValueError(f"sampler state was saved with {key}={state[key]}, this run has {getattr(self, key)}")
        self.epoch, self.position = state["epoch"], state["position"]


FEISTEL_ROUNDS = 6


def permuted(positions: np.ndarray, n: int, seed: tuple[int, ...]) -> np.ndarray:
    """Where `positions` (all < n) go in a pseudo-random permutation of range(n) chosen by `seed`.

    A Feistel network is a bijection on the 2^(2h) numbers of 2h bits whatever its round function;
    values that land at n or above are sent through it again ("cycle walking") until they land
    below n, which keeps it a bijection on range(n). 2^(2h) < 4n, so that takes under four passes
    on average."""
    half = max(1, (int(n - 1).bit_length() + 1) // 2)
    mask = np.uint64((1 << half) - 1)
    keys = np.random.default_rng(list(seed)).integers(0, 1 << 63, FEISTEL_ROUNDS, dtype=np.uint64)
    out = positions.astype(np.uint64)
    todo = np.ones(len(out), bool)
    while todo.any():
        left, right = out[todo] >> np.uint64(half), out[todo] & mask
        for key in keys:
            left, right = right, left ^ (_mix(right ^ key) & mask)
        out[todo] = left << np.uint64(half) | right
        todo = out >= n
    return out.astype(np.int64)


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: every output bit depends on every input bit."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))
