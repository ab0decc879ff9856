"""Which rows of a PPO step's global batch each process rolls out, and how they form the training
mini-batches: the same for any number of processes, so a data-parallel run trains on exactly
the mini-batches a one-process run does.

The global batch (B rows, already in the data order's random order) is laid out as a grid of
B / M mini-batches (rows of the grid) by M places (columns). Process r of W owns the columns
r*M/W .. (r+1)*M/W - 1 and rolls out those rows; one global mini-batch is one grid row, each
process holding its M/W places of it, and DDP's gradient average joins them. Epoch 0 trains on
the grid as laid out; each later epoch first shuffles every column on its own, from a stream
seeded by (seed, step, epoch, column), so mini-batches mix anew while every row stays with the
process that rolled it out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class StepPlan:
    batch_size: int  # B, the global batch
    mini_batch_size: int  # M, the global mini-batch
    world_size: int = 1
    rank: int = 0

    def __post_init__(self):
        if self.batch_size % self.mini_batch_size or self.mini_batch_size % self.world_size:
            raise ValueError(
                f"batch_size {self.batch_size} must be a multiple of mini_batch_size "
                f"{self.mini_batch_size}, and that of the {self.world_size} processes"
            )

    @property
    def share(self) -> int:
        """m = M / W: this process's places in each mini-batch."""
        return self.mini_batch_size // self.world_size

    @property
    def minibatches(self) -> int:
        return self.batch_size // self.mini_batch_size

    @property
    def columns(self) -> range:
        return range(self.rank * self.share, (self.rank + 1) * self.share)

    def on_rank(self, rank: int) -> StepPlan:
        return StepPlan(self.batch_size, self.mini_batch_size, self.world_size, rank)

    def rows(self) -> list[int]:
        """This process's rows of the global batch, mini-batch by mini-batch (its local order)."""
        return [k * self.mini_batch_size + c for k in range(self.minibatches) for c in self.columns]

    def epoch(self, seed: int, step: int, epoch: int) -> list[list[int]]:
        """The local row indices (into `rows()`) of each of this process's mini-batches in an epoch."""
        grid = np.arange(self.minibatches * self.share).reshape(self.minibatches, self.share)
        if epoch:
            for j, column in enumerate(self.columns):
                grid[:, j] = np.random.default_rng([seed, step, epoch, column]).permutation(grid[:, j])
        return grid.tolist()
