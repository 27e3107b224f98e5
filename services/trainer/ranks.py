"""Several training processes, one record.

A job with ``distributed.num_processes > 1`` runs as that many processes under
``accelerate launch``; they train together, but only the main process writes the job's
record (stage rows, metrics, heartbeats, artifacts, the job's outcome).  The others wait
where they need what it wrote, and take its word on decisions every process must make the
same way (whether to run at all, whether to stop).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's place among the run's processes."""

    is_main: bool = True
    count: int = 1

    @classmethod
    def current(cls) -> Ranks:
        """The processes ``accelerate launch`` started (one when launched plainly).

        The first ``PartialState`` of a process fixes its distributed setup for everyone
        after it (the trainers' own included), so it is made here the way they expect:
        on a machine without a GPU, CPU processes talking over gloo.
        """
        import torch
        from accelerate import PartialState

        state = PartialState(cpu=not torch.cuda.is_available())
        return cls(is_main=state.is_main_process, count=state.num_processes)

    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.count > 1:
            from accelerate import PartialState

            PartialState().wait_for_everyone()

    def from_main(self, value: T) -> T:
        """The main process's ``value``, in every process (each must call this)."""
        if self.count <= 1:
            return value
        from accelerate.utils import broadcast_object_list

        shared = [value if self.is_main else None]
        broadcast_object_list(shared, from_process=0)
        return shared[0]  # type: ignore[return-value]
