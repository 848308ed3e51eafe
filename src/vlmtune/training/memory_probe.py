"""Measured peak memory of a block of work: on CUDA from the caching allocator, on CPU from
the allocator's own events.

On CUDA, :func:`peak_memory` resets and reads ``torch.cuda.max_memory_allocated``. On CPU there
is no such counter, and the process's resident size is no measure of tensors: glibc keeps freed
blocks in its arenas, pages count only once touched, and everything else in the process moves
it too. PyTorch's CPU allocator, however, reports every allocation and every free of a tensor
to the profiler, with its running total, when memory profiling is on
(``ProfiledCPUMemoryReporter``). :func:`peak_memory` runs the block under
``torch.profiler.profile(profile_memory=True)`` and takes the largest running total over the
allocation events, less the total before the first one: the peak of tensor memory allocated
during the block, above what was live before it (to which the caller adds that, e.g. the
weights). Memory a library allocates outside PyTorch's allocator (oneDNN scratch space) is not
seen; the profiler slows the block down, so it measures memory, not time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

__all__ = ["MemoryPeak", "peak_memory", "tensor_bytes"]


@dataclass
class MemoryPeak:
    """Filled when the ``peak_memory`` block exits: ``peak`` bytes above ``start``; ``absolute``
    tells whether ``start`` is the device's whole allocated memory (CUDA) or unknown (CPU: 0)."""

    device: str
    start: int = 0
    peak: int = 0
    end: int = 0
    absolute: bool = False


@contextlib.contextmanager
def peak_memory(device: str | torch.device = "cpu") -> Iterator[MemoryPeak]:
    """Measure the peak of tensor memory allocated inside the block on ``device``."""
    device = torch.device(device)
    result = MemoryPeak(device=str(device))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        result.start, result.absolute = torch.cuda.memory_allocated(device), True
        yield result
        torch.cuda.synchronize(device)
        result.peak = torch.cuda.max_memory_allocated(device) - result.start
        result.end = torch.cuda.memory_allocated(device) - result.start
        return
    if device.type != "cpu":
        raise ValueError(f"peak_memory measures cpu and cuda devices, not {device.type}")
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, profile_memory=True) as profiler:
        yield result
    totals = _cpu_running_totals(profiler)
    if totals:
        base = totals[0][1] - totals[0][2]
        result.peak = max(total for _, total, _ in totals) - base
        result.end = totals[-1][1] - base


def _cpu_running_totals(profiler: torch.profiler.profile) -> list[tuple[int, int, int]]:
    """(time, running total, size) of every CPU allocation event, in time order.

    The running total is the CPU allocator's count of bytes allocated while profiling and not
    yet freed; a free is an event with a negative size.
    """
    from torch._C._profiler import _EventType

    events = []
    stack = list(profiler.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation:
            fields = node.extra_fields
            if fields.device.type == "cpu":
                events.append((node.start_time_ns, fields.total_allocated, fields.alloc_size))
        stack.extend(node.children)
    events.sort(key=lambda e: e[0])
    return events


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views and repeats counted once)."""
    seen, total = set(), 0
    for tensor in tensors:
        if tensor is None or not isinstance(tensor, torch.Tensor):
            continue
        storage = tensor.untyped_storage()
        key = (storage.data_ptr(), tensor.device)
        if key not in seen and storage.nbytes():
            seen.add(key)
            total += storage.nbytes()
    return total
