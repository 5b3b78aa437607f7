"""The collective check `gpt1 doctor` launches: every rank joins the process group (NCCL on GPUs,
gloo on CPU) and all-reduces its rank; the sum must be 0 + 1 + ... + (world - 1) everywhere."""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from training.run import exit_now, init_process, leave_process_group


def main() -> int:
    device = init_process()
    rank, world = dist.get_rank(), dist.get_world_size()
    total = torch.tensor([float(rank)], device=device)
    dist.all_reduce(total)
    expected = world * (world - 1) / 2
    if total.item() != expected:
        print(f"rank {rank}: all-reduce gave {total.item()}, expected {expected}", file=sys.stderr)
        return 1
    dist.barrier()
    if rank == 0:
        print(f"all-reduce across {world} processes ({dist.get_backend()}): ok")
    leave_process_group()
    return 0


if __name__ == "__main__":
    exit_now(main())
