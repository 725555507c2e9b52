"""The official combined loss: weighted cross-entropy plus soft Dice over all classes."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """Mean over classes (background included) of 1 - (2 sum pg + s) / (sum p^2 + sum g^2 + s).

    Sums run over the whole batch, as the official DiceLoss does.
    """
    probs = logits.float().softmax(dim=1)
    onehot = F.one_hot(target, probs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = (probs * probs).sum(dims) + (onehot * onehot).sum(dims)
    return (1 - (2 * inter + smooth) / (denom + smooth)).mean()


def combined_loss(
    logits: torch.Tensor, target: torch.Tensor, ce_weight: float, dice_weight: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Total, CE and Dice terms (the total is what gets back-propagated)."""
    ce = F.cross_entropy(logits.float(), target)
    dice = dice_loss(logits, target)
    return ce_weight * ce + dice_weight * dice, ce, dice
