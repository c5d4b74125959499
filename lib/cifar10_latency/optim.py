"""Muon: orthogonalised Nesterov momentum for conv filters, with plain Nesterov SGD for the rest."""

import torch

MUON_MODELS = ("plain_cnn",)  # models whose every trainable conv feeds a BatchNorm


def orthogonalize(matrix, steps=5):
    """Approximate the nearest semi-orthogonal matrix to `matrix` (its singular values set near 1).

    A quintic Newton-Schulz iteration: a few matrix products, cheap next to a training step,
    unlike an SVD. The coefficients trade exactness for speed of convergence from small values.
    Measured on random matrices, values of at least 1e-2 times the largest end between about 0.7 and
    1.2, while those under about 1e-3 of it stay below 0.5.
    """
    a, b, c = 3.4445, -4.7750, 2.0315
    x = matrix / (matrix.norm() + 1e-7)
    wide = x.shape[0] <= x.shape[1]
    if not wide:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x if wide else x.T


class Muon(torch.optim.Optimizer):
    """Nesterov SGD, except on groups marked `orthogonalize`: there the update is orthogonalised.

    An orthogonalised update moves every direction of a filter bank at the same rate, so rare
    features learn as fast as common ones. Those filters are then rescaled to a fixed norm (an
    average of 1 per output channel). A BatchNorm follows each of them, so only their direction
    matters and `lr` is the relative change per step.
    Other groups get plain Nesterov SGD with coupled weight decay, as `torch.optim.SGD` does.
    """

    def __init__(self, param_groups, lr, momentum):
        super().__init__(param_groups, {"lr": lr, "momentum": momentum, "weight_decay": 0.0, "orthogonalize": False})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            momentum = group["momentum"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if group["weight_decay"] and not group["orthogonalize"]:
                    grad = grad.add(param, alpha=group["weight_decay"])
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(param)
                buffer = state["momentum_buffer"]
                buffer.mul_(momentum).add_(grad)
                update = grad.add(buffer, alpha=momentum)
                if not group["orthogonalize"]:
                    param.sub_(update, alpha=group["lr"])
                    continue

                matrix = update.reshape(len(param), -1)
                rows, cols = matrix.shape
                update = orthogonalize(matrix) * max(1.0, rows / cols) ** 0.5
                param.sub_(update.reshape(param.shape), alpha=group["lr"])
                param.mul_(rows ** 0.5 / param.norm())
