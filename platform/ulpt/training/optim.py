"""AdamW, its learning-rate schedule and gradient clipping for a stack of fits, as tensor ops.

Row i of every tensor belongs to fit i, and every hyperparameter is an [F] tensor, so F fits with
F different learning rates, schedules, clipping thresholds and step counts take one update of a
handful of ops. Fit by fit, the result is what each fit would get from `torch.optim.AdamW`
stepped after `clip_grad_norm_` under `LambdaLR(warmup, then linear decay)`; a test holds the
update to that reference.
"""

from __future__ import annotations

import torch

BETA1, BETA2 = 0.9, 0.999
EPS = 1e-8
CLIP_EPS = 1e-6
"""As `torch.nn.utils.clip_grad_norm_`: the clipping coefficient is max_norm / (norm + 1e-6)."""


def lr_factor(step: torch.Tensor, warmup: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """[F] schedule factor after `step` finished steps: linear warmup, then linear decay to 0."""
    warming = (step + 1) / warmup.clamp(min=1)
    decaying = ((total - step) / (total - warmup).clamp(min=1)).clamp(min=0)
    return torch.where(step < warmup, warming, decaying)


def clip_coefficients(grad: torch.Tensor, max_norm: torch.Tensor) -> torch.Tensor:
    """[F] factors that bring each fit's gradient norm (row i of grad [F, P]) to at most max_norm[i].

    A fit without clipping has max_norm = inf, hence a factor of 1.
    """
    norm = grad.pow(2).sum(1).sqrt()  # [F]: the norm over all of a fit's parameters together
    return (max_norm / (norm + CLIP_EPS)).clamp(max=1.0)


@torch.no_grad()
def adamw_(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step: torch.Tensor,
    lr: torch.Tensor,
    weight_decay: torch.Tensor,
) -> None:
    """One AdamW update in place of param, exp_avg, exp_avg_sq [F, P]; step counts this update, [F]."""
    lr, weight_decay = lr[:, None], weight_decay[:, None]
    param.mul_(1 - lr * weight_decay)  # decoupled weight decay
    exp_avg.lerp_(grad, 1 - BETA1)
    exp_avg_sq.mul_(BETA2).addcmul_(grad, grad, value=1 - BETA2)
    bias1 = 1 - torch.pow(BETA1, step)[:, None]
    bias2_sqrt = (1 - torch.pow(BETA2, step)).sqrt()[:, None]
    denom = (exp_avg_sq.sqrt() / bias2_sqrt).add_(EPS)
    param.sub_(exp_avg / denom * (lr / bias1))
