"""Per-epoch lines on the driver's terminal for Ray Train runs (`pretrain`, `finetune`, `demo`).

Workers report each epoch's metrics with `ray.train.report` (training.loop.fit_worker); Ray
Train hands them to `UserCallback.after_report` on its controller, which may be a different
process from the driver, whose worker logs stay off (`log_to_driver=False`). So the callback
puts rank 0's metrics (the ones with validation) on a `ray.util.queue.Queue` (an actor that
takes no CPU) and a thread in the driver prints them as they arrive with
pipeline.progress.EpochLine.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import ray.train
from ray.util.queue import Empty, Queue

from pipeline.progress import EpochLine

log = logging.getLogger(__name__)


class MetricsToDriver(ray.train.UserCallback):
    """Runs in Ray Train's controller: forwards rank 0's metrics of every report."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    def after_report(
        self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any
    ) -> None:
        """metrics[i] is what worker i reported; rank 0's has the validation figures."""
        if metrics:
            try:
                self.queue.put_nowait(dict(metrics[0]))
            except Exception as exc:  # progress must never fail a training run
                log.debug("epoch metrics not forwarded: %s", exc)


class EpochRelay:
    """Driver side: a queue, the callback to give `RunConfig(callbacks=[...])`, and a thread
    printing one line per epoch. `close()` prints what is left and removes the queue actor."""

    def __init__(self, epochs: int, desc: str = "train") -> None:
        self.printer = EpochLine(epochs, desc)
        self.queue = Queue(actor_options={"num_cpus": 0})
        self.callback = MetricsToDriver(self.queue)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, name="epoch-lines", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        while not self._stop.is_set():
            try:
                self.printer(self.queue.get(timeout=0.5))
            except Empty:
                continue
            except Exception as exc:  # the queue actor went away (Ray shutting down)
                log.debug("epoch lines stopped: %s", exc)
                return

    def close(self) -> None:
        """Stop the thread after printing every metric already queued."""
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            while not self.queue.empty():
                self.printer(self.queue.get_nowait())
            self.queue.shutdown()
        except Exception as exc:
            log.debug("epoch queue: %s", exc)
