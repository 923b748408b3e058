"""The update of one training stage: backward, gradient clipping with the NaN guard, the step
and the schedule (the Updater every strategy's trainer loop calls). Imports nothing else of
aster.train, so the strategies and the trainers can both build on it."""

from __future__ import annotations

import math

import torch

from aster.errors import AsterUserError


class TrainingDivergedError(AsterUserError):
    """The loss or gradient became NaN/inf; training stopped before corrupting the weights."""


def diverged_error(where: str, loss: float, grad_norm: float,
                   last_good: str | None) -> TrainingDivergedError:
    keep = f"the last good checkpoint is {last_good}" if last_good else \
        "no checkpoint was written yet"
    return TrainingDivergedError(f"{where}: loss={loss} grad_norm={grad_norm} is not finite; "
                                 f"stopped, {keep}; lower the learning rate or check the data")


def optimizer_step(model, optimizer, scheduler, max_grad_norm: float, loss: float,
                   where: str, last_good: str | None) -> float:
    """Clip, guard against NaN/inf, step. Raises TrainingDivergedError without stepping."""
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        optimizer.zero_grad(set_to_none=True)
        raise diverged_error(where, loss, grad_norm, last_good)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


class Updater:
    """The optimizer side of one training stage under the run's parallel strategy: backward,
    gradient clipping with the NaN guard, the step and the schedule. The trainers' loops call
    only this, so they read the same under every strategy:

        for chunk in updater.accumulate(micro_batches):
            updater.backward(loss_of(updater.policy, chunk))  # loss / global token count
        grad_norm = updater.step(loss_total, where, last_good)
    """

    def __init__(self, policy, optimizer, scheduler, max_grad_norm: float, world_size: int):
        self.policy, self.optimizer, self.scheduler = policy, optimizer, scheduler
        self.max_grad_norm, self.world_size = max_grad_norm, world_size

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def accumulate(self, items):
        """The micro batches of one optimizer step, in order."""
        yield from items

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate the gradient of `loss` (normalised by the global token count)."""
        (loss * self.world_size).backward()  # the wrappers average gradients over ranks

    def step(self, loss: float, where: str, last_good: str | None) -> float:
        """Clip, guard, step, zero the gradients; returns the gradient norm before clipping.
        Raises TrainingDivergedError (naming `last_good`) when loss or norm is not finite."""
        return optimizer_step(self.policy, self.optimizer, self.scheduler, self.max_grad_norm,
                              loss, where, last_good)
