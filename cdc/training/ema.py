"""Exponential moving average of model weights (the official X-param recipe: 0.999 every 10 steps).

Before ``start`` steps the average simply copies the weights (early weights are noise);
afterwards every ``every`` steps ``ema = decay * ema + (1 - decay) * weights``. With ``warmup`` the
decay of the n-th average is ``min(decay, (1 + n) / (10 + n))`` (the ``num_updates`` rule of
TensorFlow's ``ExponentialMovingAverage``, also diffusers' ``EMAModel``): the shadow's horizon grows
with the run instead of weighing the weights at ``start`` for thousands of steps (0.999 every 10
steps keeps 84 % of the step-100 weights at step 1,900). Long runs are unaffected: the rule reaches
0.999 after 8,991 averages. Buffers (e.g. the
entropy coder's tables) are copied, not averaged. It implements ``state_dict`` /
``load_state_dict`` so ``accelerator.register_for_checkpointing`` saves and restores it.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Shadow copy of a model's weights.

    Args:
        model: the (unwrapped) model to track; the shadow is a deep copy in eval mode.
        decay: in [0, 1); 0 makes the shadow a plain copy.
        every: update period, steps.
        start: steps during which the shadow copies the weights.
        warmup: the decay of the n-th average is ``min(decay, (1 + n) / (10 + n))``.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, every: int = 10, start: int = 100,
                 warmup: bool = False) -> None:
        self.decay, self.every, self.start, self.warmup = decay, every, start, warmup
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Call after the optimizer step ``step`` (1-based count of steps taken)."""
        copying = step <= self.start or self.decay == 0
        if not copying and step % self.every:
            return
        params = dict(model.named_parameters())
        names, shadow = zip(*self.shadow.named_parameters(), strict=True)
        weights = [params[n].detach().to(p.dtype) for n, p in zip(names, shadow, strict=True)]
        # one multi-tensor kernel instead of one launch per parameter tensor (a load_state_dict every
        # step until ``start`` cost a paper-preset step on an H100 35-50 ms)
        if copying:
            torch._foreach_copy_(shadow, weights)
        else:
            torch._foreach_lerp_(shadow, weights, 1 - self.decay_at(step))
        buffers = dict(model.named_buffers())
        for name, b in self.shadow.named_buffers():
            if buffers[name].shape == b.shape:
                b.copy_(buffers[name])

    def decay_at(self, step: int) -> float:
        """The decay of the average taken after optimizer step ``step`` (past ``start``), in [0, 1)."""
        if not self.warmup:
            return self.decay
        n = (step - self.start) // self.every  # averages taken so far, this one included (derived: resumable)
        return min(self.decay, (1 + n) / (10 + n))

    def state_dict(self) -> dict:
        return self.shadow.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.shadow.load_state_dict(state)
