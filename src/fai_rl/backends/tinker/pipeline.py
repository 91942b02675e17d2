"""Pipelined training steps for the Tinker SFT/DPO loops: step N+1's forward_backward and optim_step are submitted
before step N's results are awaited, as tinker-cookbook's supervised/train.py does.

The service runs requests in clock cycles and a training client executes them in submission order, so a client
that waits for step N before submitting N+1 leaves the service idle for the round trip (and on the hosted service can
miss a whole cycle). Queuing one step ahead keeps the next request waiting on the service. It is never done across a
step after which something must see the weights as they are at that step (an evaluation, a saved state, a stop):
there the loop waits, so a state named step-N holds exactly N updates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any


def pipelined(start: int, total: int, submit: Callable[[int], Any],
              may_queue: Callable[[int], bool]) -> Iterator[tuple[int, Any, bool]]:
    """Yield (step, what submit(step) returned, whether step + 1 is already submitted), steps start..total-1.

    submit(step) sends the step's requests without waiting; may_queue(done) says whether step `done` (counted from 1)
    may be followed at once by the next one, i.e. no evaluation, save or stop is due after it."""
    queued = None
    for step in range(start, total):
        handle = queued if queued is not None else submit(step)
        queued = submit(step + 1) if step + 1 < total and may_queue(step + 1) else None
        yield step, handle, queued is not None
