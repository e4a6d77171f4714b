"""The digits classifier: held-out accuracy, any image side, the cache, its features."""

import pytest
import torch

from noiseshift.analysis import classifier as C
from noiseshift.analysis.quality import FeatureSpace, frechet_distance
from noiseshift.data import load_digits
from noiseshift.errors import NoiseshiftError

pytestmark = pytest.mark.usefixtures("one_thread")


# -- the digits classifier ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def classifier():
    return C.digits_classifier()  # conftest points the cache at a temporary folder


def test_classifier_accuracy_on_held_out_digits(classifier):
    _, held = load_digits(16).split(0.2, seed=0)
    acc = C.classifier_accuracy(held.x, held.labels, classifier)
    assert acc.value > 0.9 and acc.lo > 0.85


def test_classifier_reads_any_side_and_is_cached(classifier, monkeypatch):
    _, held = load_digits(32).split(0.2, seed=0)
    assert C.classifier_accuracy(held.x, held.labels, classifier).value > 0.9

    def no_training(*a, **k):
        raise AssertionError("the cached classifier was retrained")

    monkeypatch.setattr(C, "train_digits_classifier", no_training)
    again = C.digits_classifier()
    x = held.x[:8]
    assert torch.equal(again.features(x), classifier.features(x))


def test_classifier_rejects_colour_images(classifier):
    with pytest.raises(NoiseshiftError):
        classifier.features(torch.zeros(2, 3, 16, 16))


def test_digit_features_see_noise(classifier):
    """FD in the classifier's features grows with residual noise on real digits."""
    train, held = load_digits(16).split(0.2, seed=0)
    space = FeatureSpace(train.x, "digits", classifier=classifier)
    g = torch.Generator().manual_seed(0)
    fds = [frechet_distance(space(held.x + s * torch.randn(held.x.shape, generator=g)),
                              space.reference) for s in (0.0, 0.1, 0.3)]
    assert fds[0] < fds[1] < fds[2]
