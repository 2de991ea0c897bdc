"""The gradient family of importance estimators: ``fisher`` (g^2) and ``taylor`` (|g * theta|)."""

from __future__ import annotations

import torch

from .importance import ImportanceEstimator, register_estimator


@register_estimator
class FisherEstimator(ImportanceEstimator):
    """Squared gradient of the step (diagonal empirical Fisher of the step's mean loss)."""

    name = "fisher"
    squared_gradient = True

    def saliency(self, param: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return grad.float().square()


@register_estimator
class TaylorEstimator(ImportanceEstimator):
    """First-order Taylor estimate of the loss change if the element were zeroed: |g * theta|."""

    name = "taylor"

    def saliency(self, param: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return (grad.float() * param.detach().float()).abs_()
