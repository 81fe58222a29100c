"""What a running job reports (progress, metrics, the record) and how it learns it was cancelled.

Two implementations: the trainer service's own (twinbench.trainer.queue) and the job worker's,
which sends the same reports over a socket to the service (twinbench.training.worker).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from twinbench.api import trainer_pb2 as tpb


class JobContext(Protocol):
    """What a running job's training loop may do: report, and learn that it was cancelled."""

    job: tpb.Job  # the live record: change it only through update()
    shutting_down: bool  # a cancel came from the trainer stopping, not from a user

    def check_cancelled(self) -> None:
        """Raises JobCancelled once the job was asked to stop."""

    def progress(self, epoch: int, batch: int, batches: int, loss: float) -> None:
        """A batch's progress; implementations let a few a second through (ProgressGate)."""

    def update(self, change: Callable[[tpb.Job], None]) -> None:
        """Applies `change` to the live record and stores or sends it."""

    def epoch_done(self, metrics: tpb.EpochMetrics) -> None:
        """An epoch's metrics, appended to the record and announced to watchers."""


class ProgressGate:
    """Lets a batch's progress through a few times a second, and always the epoch's last:
    enough for a progress bar, and nothing the training loop would notice."""

    INTERVAL_S = 0.25

    def __init__(self) -> None:
        self._last = 0.0

    def due(self, batch: int, batches: int) -> bool:
        now = time.monotonic()
        if batch == batches or now - self._last >= self.INTERVAL_S:
            self._last = now
            return True
        return False
