import pytest
import torch

from cifar10_latency.optim import Muon, orthogonalize


@pytest.mark.parametrize("shape", [(16, 72), (72, 16), (8, 8)])
def test_orthogonalize_sets_singular_values_near_one(shape):
    generator = torch.Generator().manual_seed(0)
    # Singular values spread over two orders of magnitude, as in a real gradient.
    matrix = torch.randn(shape, generator=generator) @ torch.diag(torch.logspace(-2, 0, shape[1]))

    result = orthogonalize(matrix)

    assert result.shape == matrix.shape
    singular = torch.linalg.svdvals(result)
    assert singular.min() > 0.5
    assert singular.max() < 1.3


def test_orthogonalize_keeps_singular_vectors():
    generator = torch.Generator().manual_seed(1)
    left, _ = torch.linalg.qr(torch.randn(12, 12, generator=generator))
    right, _ = torch.linalg.qr(torch.randn(40, 12, generator=generator))
    matrix = left @ torch.diag(torch.linspace(0.2, 5.0, 12)) @ right.T

    result = orthogonalize(matrix)

    # The same directions, with the small and the large values pulled towards 1.
    assert torch.allclose(left.T @ result @ right, torch.diag(torch.diagonal(left.T @ result @ right)), atol=1e-4)


def filters_and_grads(seed):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.nn.Parameter(torch.randn(8, 4, 3, 3, generator=generator))
    grads = [torch.randn(8, 4, 3, 3, generator=generator) for _ in range(3)]
    return weight, grads


def test_muon_fixes_filter_norm_and_step_size():
    weight, grads = filters_and_grads(0)
    optimizer = Muon([{"params": [weight], "orthogonalize": True}], lr=0.05, momentum=0.85)
    # The first step also rescales the random filters to the fixed norm.
    weight.grad = grads[0]
    optimizer.step()

    for grad in grads[1:]:
        before = weight.detach().clone()
        weight.grad = grad
        optimizer.step()
        # The norm is sqrt(out_channels) after every step, so the LR is a relative change.
        assert weight.norm().item() == pytest.approx(8 ** 0.5, rel=1e-5)
        assert 0.03 < ((weight - before).norm() / before.norm()).item() < 0.06


def test_muon_other_groups_match_sgd():
    weight, grads = filters_and_grads(2)
    twin = torch.nn.Parameter(weight.detach().clone())
    muon = Muon([{"params": [weight], "weight_decay": 1e-3}], lr=0.1, momentum=0.85)
    sgd = torch.optim.SGD([twin], lr=0.1, momentum=0.85, nesterov=True, weight_decay=1e-3)

    for grad in grads:
        weight.grad, twin.grad = grad.clone(), grad.clone()
        muon.step()
        sgd.step()

    assert torch.allclose(weight, twin, atol=1e-6)
    assert not torch.equal(weight, filters_and_grads(2)[0])
