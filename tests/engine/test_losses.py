"""The Dice loss against the official formula, and CE + Dice weighted as the protocol says."""
import pytest
import torch

from bench.engine.losses import combined_loss, dice_loss


def test_dice_loss_matches_the_official_formula():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 8, 8))
    p = logits.softmax(1)
    expected = []
    for c in range(3):
        g = (target == c).float()
        expected.append(1 - (2 * (p[:, c] * g).sum() + 1e-5) / ((p[:, c] ** 2).sum() + (g**2).sum() + 1e-5))
    assert dice_loss(logits, target).item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-6)
    total, ce, dl = combined_loss(logits, target, 0.4, 0.6)
    assert total.item() == pytest.approx(0.4 * ce.item() + 0.6 * dl.item(), rel=1e-6)
