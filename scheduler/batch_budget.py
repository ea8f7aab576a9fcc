"""The write batch's size limit, sized by a write-time budget.

A bigger batch costs the database less per reading (one INSERT statement, one
transaction, one ``device_state``/rollup pass for up to FerretDB's
``--test-batch-size`` rows), but a slow write holds its readings' acks longer and
keeps a writer busy. The limit starts at ``batch_size`` and moves only on evidence
from full batches written by the regular writers (express batches are small and
written apart):

* a full batch written within the budget grows the limit towards what the measured
  time per reading says would fill the budget (``BUDGET_FILL`` of it), at most doubling
  per write and never above ``batch_max``;
* a batch that took longer than the budget shrinks the limit to what would have fit
  it (at most halving per write), never below ``batch_size``.

Partial batches (taken by linger or a drain, with less than the limit buffered) do
not grow the limit: a light load is not evidence that more readings would fit. A slow
partial batch shrinks it all the same. The budget ``0`` keeps
``batch_size`` fixed, the behaviour before this module.
"""

from __future__ import annotations

BUDGET_FILL = 0.8  # grow towards this share of the budget (room for the write time's noise)


class BatchBudget:
    """The readings a regular write batch may hold, within ``[floor, ceiling]``."""

    def __init__(self, floor: int, ceiling: int, budget_s: float) -> None:
        if floor < 1:
            raise ValueError("floor must be at least 1")
        self.floor = floor
        self.ceiling = max(floor, ceiling)
        self.budget_s = budget_s
        self.limit = floor

    @property
    def adaptive(self) -> bool:
        """Whether the limit moves at all."""
        return self.budget_s > 0 and self.ceiling > self.floor

    def observe(self, readings: int, seconds: float, full: bool = True) -> int:
        """A regular batch of ``readings`` was written in ``seconds``; the new limit.

        ``full``: the batch was taken because the buffers held at least the limit (not
        by linger or a drain), so more readings were waiting.
        """
        if not self.adaptive or readings < 1 or seconds < 0:
            return self.limit
        if seconds > self.budget_s:
            fits = int(readings * self.budget_s / seconds)
            self.limit = max(self.floor, self.limit // 2, min(self.limit, fits))
        elif full:
            per_reading = seconds / readings
            fits = int(self.budget_s * BUDGET_FILL / per_reading) if per_reading else self.ceiling
            if fits > self.limit:
                self.limit = min(self.ceiling, self.limit * 2, fits)
        return self.limit
