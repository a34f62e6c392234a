"""When the learning rate moves and when training stops: a warm-up and cosine decay whose
horizon shrinks to the epochs a time budget allows, and the switch between the phases of
progressive resizing."""

from __future__ import annotations

import math
import time


def cosine_lr(step: int, total_steps: int, peak: float, warmup_steps: int) -> float:
    """Linear warm-up from peak/10 to peak, then cosine decay to zero at the last step
    (``total_steps - 1``)."""
    if step < warmup_steps:
        return peak * (0.1 + 0.9 * step / warmup_steps)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - 1 - warmup_steps))
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def affordable_epochs(planned: int, done: int, elapsed_s: float, longest_epoch_s: float,
                      budget_s: float | None) -> int:
    """Epochs in all that fit the time budget, if every further epoch is as slow as the
    slowest so far (never fewer than already done, never more than planned)."""
    if not budget_s or longest_epoch_s <= 0:
        return planned
    more = int((budget_s - elapsed_s) // longest_epoch_s)
    return max(done, min(planned, done + max(more, 0)))


def budgeted_cosine(peak: float, steps_per_epoch: int, planned_epochs: int,
                     budget_s: float | None):  # noqa: ANN202 - returns a Keras callback
    """Cosine learning rate whose horizon shrinks to the epochs the time budget allows.

    A schedule fixed at compile time would stop a budget-cut run at a high learning rate;
    this one re-plans after every epoch from measured epoch times, so the rate still anneals
    to zero in the last epoch that fits, and training stops there."""
    import keras

    class BudgetedCosine(keras.callbacks.Callback):
        """One schedule across several `fit` calls (the phases of progressive resizing): its
        clock, step count and plan start with the first call only."""

        finished = False
        start: float | None = None

        def on_train_begin(self, logs=None):  # noqa: ANN001, ANN202
            if self.start is None:
                self.start = time.monotonic()
                self.longest, self.step, self.total_epochs = 0.0, 0, planned_epochs
                self.warmup = min(planned_epochs * steps_per_epoch // 20, 100)
            self.last = time.monotonic()

        def on_train_batch_begin(self, batch, logs=None):  # noqa: ANN001, ANN202
            lr = cosine_lr(self.step, self.total_epochs * steps_per_epoch, peak, self.warmup)
            self.model.optimizer.learning_rate.assign(lr)
            self.step += 1

        def on_epoch_end(self, epoch, logs=None):  # noqa: ANN001, ANN202
            now = time.monotonic()
            self.longest, self.last = max(self.longest, now - self.last), now
            self.total_epochs = affordable_epochs(planned_epochs, epoch + 1, now - self.start,
                                                  self.longest, budget_s)
            if epoch + 1 >= self.total_epochs:
                self.finished = True
                if self.total_epochs < planned_epochs:
                    print(f"stopping after epoch {epoch + 1}: another would pass the "
                          f"{budget_s:.0f}s budget", flush=True)
                self.model.stop_training = True

    return BudgetedCosine()


def phase_end(seconds: float | None, epochs: int):  # noqa: ANN202 - returns a Keras callback
    """Ends a `fit` call after the first epoch that reaches `seconds` of it (or, without a time,
    after `epochs` epochs): the switch from the low-resolution phase to full resolution."""
    import keras

    class PhaseEnd(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):  # noqa: ANN001, ANN202
            self.start, self.epochs = time.monotonic(), 0

        def on_epoch_end(self, epoch, logs=None):  # noqa: ANN001, ANN202
            self.epochs += 1
            if (time.monotonic() - self.start >= seconds) if seconds else self.epochs >= epochs:
                self.model.stop_training = True

    return PhaseEnd()
