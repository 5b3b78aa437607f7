"""Training data: fixed-length windows over token shards, and the order they are read in.

`TokenWindows` maps a split's shards with `numpy.memmap` (no copy, no loading) and serves window
`i` as `seq_len + 1` consecutive tokens: the inputs and, shifted by one, the next-token targets.
Windows do not overlap and never straddle two shards (a shard's last few tokens are unused).

`Sampler` decides which windows each optimizer step reads: one permutation per epoch (seeded by
seed and epoch), cut into global batches; a rank takes its slice of each. Its state is the epoch
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
        self._perm, self._perm_epoch = np.arange(0), -1

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.global_batch

    def next_batch(self) -> list[int]:
        """This rank's windows for the next step (global_batch / world_size of them), and advance."""
        if self.position + self.global_batch > self.n:
            self.epoch, self.position = self.epoch + 1, 0
        order = self._order(self.epoch)
        step = order[self.position : self.position + self.global_batch]
        self.position += self.global_batch
        per_rank = self.global_batch // self.world_size
        return step[self.rank * per_rank : (self.rank + 1) * per_rank].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            yield self.next_batch()

    def _order(self, epoch: int) -> np.ndarray:
        if self._perm_epoch != epoch:
            self._perm, self._perm_epoch = np.random.default_rng([self.seed, epoch]).permutation(self.n), epoch
        return self._perm

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "n": self.n, "global_batch": self.global_batch,
                "seed": self.seed}  # fmt: skip

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue where `state` left off; the data, batch and seed must be the ones it was saved with."""
        for key in ("n", "global_batch", "seed"):
            if state[key] != getattr(self, key):
                raise ValueError(f"sampler state was saved with {key}={state[key]}, this run has {getattr(self, key)}")
        self.epoch, self.position = state["epoch"], state["position"]
