"""A wall-time budget for one Hugging Face ``Trainer`` run (TRL's SFTTrainer, sentence-transformers' trainers).

After ``calibrate_steps`` optimizer steps (always trained) the callback knows the seconds per step on this machine; when the
planned steps do not fit the budget it cuts ``max_steps`` to what fits and stretches the learning-rate schedule
over the new count (a linear or cosine decay then still ends at zero, instead of the run being cut mid-way at a
high rate). The first steps pay for warm-up, so after them the fit is redone at every step from the pace since
calibration and the time left (never past the planned steps), and the schedule follows. The trainer stops at the new count as it stops at a planned end: the end-of-epoch evaluation, the
best checkpoint and saving happen as usual. What it did is in :attr:`TimeBudget.report` (for the manifest).
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

from transformers import TrainerCallback

logger = logging.getLogger(__name__)


class TimeBudget(TrainerCallback):
    """Fit a training run into ``seconds`` of wall time (the training loop only)."""

    def __init__(self, seconds: float, calibrate_steps: int = 3) -> None:
        if seconds <= 0:
            raise ValueError(f"a time budget must be positive, got {seconds}")
        self.seconds, self.calibrate_steps = seconds, calibrate_steps
        self.began = 0.0
        self.fitted: int | None = None
        self.calibrated_at = 0.0  # elapsed seconds at the calibration step
        self.report: dict[str, Any] = {"budget_s": round(seconds, 3)}

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201 - the callback protocol
        self.began = time.perf_counter()
        self.report["planned_steps"] = state.max_steps
        return control

    def on_step_end(self, args, state, control, lr_scheduler=None, **kwargs):  # noqa: ANN001, ANN201
        step, elapsed = state.global_step, time.perf_counter() - self.began
        if "seconds_per_step" not in self.report and step >= self.calibrate_steps:
            per_step = elapsed / step
            fit = max(step, int(self.seconds / per_step))
            self.report.update({"seconds_per_step": round(per_step, 2), "fitted_steps": min(fit, state.max_steps)})
            self.calibrated_at = elapsed
            if fit < state.max_steps:
                self.fitted = fit
                self.report.update({"lr_schedule_rescaled": _stretch(lr_scheduler, fit), "refits": 0})
                logger.warning("time budget %.0f s: %d of %d planned steps fit (%.1f s a step); training stops at %d",
                               self.seconds, fit, state.max_steps, per_step, fit)
                state.max_steps = fit
        elif self.fitted is not None and self.calibrate_steps < step < self.fitted:
            pace = (elapsed - self.calibrated_at) / (step - self.calibrate_steps)
            fit = min(self.report["planned_steps"], step + max(0, int((self.seconds - elapsed) / pace)))
            if fit != self.fitted:
                _warp(lr_scheduler, step, self.fitted, fit)
                self.fitted = state.max_steps = fit
                self.report.update({"fitted_steps": fit, "seconds_per_step_after_warmup": round(pace, 2),
                                    "refits": self.report["refits"] + 1})
        if self.fitted is not None and step >= self.fitted:
            control.should_training_stop = True
        # Slower than calibrated: stop now (never before the calibration steps: every run trains at least those).
        if step >= self.calibrate_steps and elapsed >= self.seconds and not control.should_training_stop:
            logger.warning("time budget %.0f s spent at step %d", self.seconds, step)
            control.should_training_stop = True
        if control.should_training_stop:
            self.report.update({"steps": step, "stopped_early": step < self.report["planned_steps"],
                                "train_loop_s": round(elapsed, 1)})
        return control


def _stretch(scheduler: Any, steps: int) -> bool:
    """Make a transformers schedule (a ``LambdaLR`` over ``partial(..., num_training_steps=N)``) end at ``steps``;
    False when the schedule is of another kind (it is then left as it is)."""
    lambdas = getattr(scheduler, "lr_lambdas", None)
    if not lambdas or not all(isinstance(f, functools.partial) and "num_training_steps" in f.keywords for f in lambdas):
        return False
    scheduler.lr_lambdas = [functools.partial(f.func, *f.args, **{**f.keywords, "num_training_steps": steps})
                            for f in lambdas]
    return True


def _warped(t: float, *, f: Any, step: int, old: int, new: int) -> float:
    return f(step + (t - step) * (old - step) / (new - step))


def _warp(scheduler: Any, step: int, old: int, new: int) -> None:
    """From ``step`` on, run what was left of the schedule (up to ``old``) over the steps up to ``new`` instead:
    the rate goes on from where it is, without a jump, and still ends where the schedule ends."""
    lambdas = getattr(scheduler, "lr_lambdas", None)
    if lambdas and new > step:
        scheduler.lr_lambdas = [functools.partial(_warped, f=f, step=step, old=old, new=new) for f in lambdas]
