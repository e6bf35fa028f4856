"""Scoring modes pinned on hand-computed embeddings."""

import math

import pytest
import torch

from padim.core.scoring import chebyshev_by_position, combine, term_statistics


def test_chebyshev_term_by_hand():
    # one position, one patch, three channels: mean 0, std (1, 2, 0)
    mean = torch.zeros(1, 3)
    std = torch.tensor([[1.0, 2.0, 0.0]])
    x = torch.tensor([[[3.0, 1.0, 0.0]]])  # k = (3, 0.5, 0/0 -> nan)
    # terms: 1 - 1/9 = 0.8889, 1 - 1/0.25 = -3, nan -> 0; max = 0.8889
    assert float(chebyshev_by_position(x, mean, std)) == pytest.approx(8 / 9)
    x = torch.tensor([[[0.5, 0.0, 0.0]]])  # k = (0.5, 0 -> -inf, nan): -3, 0, 0 -> max 0
    assert float(chebyshev_by_position(x, mean, std)) == 0.0
    x = torch.tensor([[[0.0, 0.0, 2.0]]])  # channel 3: k = 2/0 = inf -> 1 - 0 = 1
    assert float(chebyshev_by_position(x, mean, std)) == 1.0


def test_modes_combine_terms_by_hand():
    maha = torch.tensor([10.0, 20.0])
    cheb = torch.tensor([0.5, 0.9])
    assert torch.equal(combine("mahalanobis", maha, cheb), maha)
    assert torch.equal(combine("chebyshev", maha, cheb), cheb)
    assert torch.allclose(combine("hybrid", maha, cheb), torch.tensor([5.25, 10.45]))
    stats = torch.tensor([10.0, 5.0, 0.5, 0.2])  # mean/std of each term on good patches
    # ((10-10)/5 + (0.5-0.5)/0.2)/2 = 0 ; ((20-10)/5 + (0.9-0.5)/0.2)/2 = (2 + 2)/2 = 2
    assert torch.allclose(combine("hybrid-scaled", maha, cheb, stats), torch.tensor([0.0, 2.0]))
    with pytest.raises(ValueError, match="unknown score mode"):
        combine("median", maha, cheb)


def test_term_statistics():
    maha = torch.tensor([[1.0, 3.0]])
    cheb = torch.tensor([[0.0, 0.5]])
    s = term_statistics(maha, cheb)
    assert s.tolist() == pytest.approx([2.0, math.sqrt(2), 0.25, math.sqrt(0.125)])
    assert term_statistics(torch.ones(1), torch.ones(1)).tolist() == [0.0, 1.0, 0.0, 1.0]
