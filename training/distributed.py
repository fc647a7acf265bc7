"""Training under ``torchrun`` / ``accelerate launch``: one process per device, rank 0 alone writes artifacts.

accelerate's ``PartialState`` reads the launcher's environment (``WORLD_SIZE``, ``RANK``, ...) and starts the
process group (NCCL on GPUs, gloo on CPUs); a plain ``python`` run is a world of one and every helper here
is a no-op. The recipes use these helpers for what the Trainer does not do itself: agree on the artifact id,
prepare data once, and write the artifact once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def _state():
    import torch
    from accelerate import PartialState

    # Without an accelerator accelerate only starts a process group (gloo) when told it runs on CPUs.
    return PartialState(cpu=not torch.accelerator.is_available())


def world_size() -> int:
    return _state().num_processes


def backend() -> str | None:
    """The process group's backend (gloo, nccl), None in a single-process run."""
    return _state().backend


def is_main() -> bool:
    """True on rank 0 (and in a single-process run)."""
    return _state().is_main_process


def barrier() -> None:
    _state().wait_for_everyone()


def agree(make: Callable[[], T]) -> T:
    """``make()`` on rank 0, and rank 0's value on every rank (a random id, a timestamp)."""
    if world_size() == 1:
        return make()
    from accelerate.utils import broadcast_object_list

    box = [make() if is_main() else None]
    broadcast_object_list(box, from_process=0)
    return box[0]  # type: ignore[return-value]


def on_main(work: Callable[[], T]) -> T | None:
    """Run ``work`` on rank 0 while the others wait; rank 0's result there, None elsewhere. An error on rank 0
    is raised there (the launcher then stops the others)."""
    result = work() if is_main() else None
    barrier()
    return result
