"""The partial gradient correlation the verdict's vertebra evidence reads, against answers known by construction."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from SpineRegistrationLib.similarity import gradient_ncc, partial_gradient_ncc


def smooth_field(seed: int, size: int = 64) -> torch.Tensor:
    """A random field with structure at a few pixels (blurred white noise), (size, size)."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(1, 1, size + 8, size + 8, generator=generator)
    kernel = torch.ones(1, 1, 5, 5) / 25.0
    return F.conv2d(noise, kernel)[0, 0, 2:-2, 2:-2]


@pytest.fixture(scope="module")
def fields():
    return smooth_field(1), smooth_field(2), smooth_field(3)


def test_an_image_made_of_both_correlates_with_the_candidate_beyond_the_explained(fields):
    background, vertebra, _ = fields
    weight = torch.ones_like(background)
    image = 2.0 * background + 0.7 * vertebra
    assert float(partial_gradient_ncc(image, background, vertebra, weight)) > 0.99
    # Gain and offset change nothing (the X-ray's scale is unknown).
    assert float(partial_gradient_ncc(5.0 * image + 3.0, background, vertebra, weight)) == pytest.approx(
        float(partial_gradient_ncc(image, background, vertebra, weight)), abs=1e-5)


def test_what_the_explained_image_accounts_for_gives_no_evidence(fields):
    background, vertebra, other = fields
    weight = torch.ones_like(background)
    # The X-ray is the background (and something unrelated): the vertebra explains nothing more.
    assert abs(float(partial_gradient_ncc(background, background, vertebra, weight))) < 1e-3
    assert abs(float(partial_gradient_ncc(background + other, background, vertebra, weight))) < 0.1
    # Plain gradient NCC would credit a candidate that merely resembles the background.
    lookalike = background + 0.3 * vertebra
    assert float(gradient_ncc(lookalike, background, weight)) > 0.9
    assert float(partial_gradient_ncc(background, background, lookalike, weight)) < 1e-3


def test_only_the_weighted_region_counts(fields):
    background, vertebra, other = fields
    weight = torch.zeros_like(background)
    weight[:, :32] = 1.0
    # Left half: background plus the vertebra; right half: background plus something else.
    image = background.clone()
    image[:, :32] += vertebra[:, :32]
    image[:, 32:] += other[:, 32:]
    left = float(partial_gradient_ncc(image, background, vertebra, weight))
    right = float(partial_gradient_ncc(image, background, vertebra, 1.0 - weight))
    assert left > 0.9 and abs(right) < 0.2
    # Batched over leading dimensions, like the other measures.
    both = partial_gradient_ncc(torch.stack([image, image]), background, torch.stack([vertebra, other]), weight)
    assert both.shape == (2,) and float(both[0]) == pytest.approx(left, abs=1e-5) and float(both[1]) < 0.2
