"""The built-in workload of ``modfsm run``: scikit-learn's 8x8 digits and a small MLP.

The data set (1,797 handwritten digits, 8x8 pixels, 10 classes) ships inside
scikit-learn, so nothing is downloaded. It is split once, with a fixed seed
(independent of the run's seed), into 1,437 training and 360 test images, so
every run is measured on the same test images. Pixels are scaled to [0, 1].
"""

from __future__ import annotations

from typing import Final

import attrs
import torch

__all__ = ["HIDDEN", "IMAGES", "TEST_IMAGES", "TRAIN_IMAGES", "Digits", "DigitsMLP", "load"]

IMAGES: Final = 1797
"""scikit-learn's digits data set holds 1,797 images."""
TEST_IMAGES: Final = 360
TRAIN_IMAGES: Final = IMAGES - TEST_IMAGES
HIDDEN: Final = 256
_SPLIT_SEED: Final = 20260101


@attrs.frozen
class Digits:
    """The split data set, as float32 images (N, 64) and int64 labels (N,)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def load() -> Digits:
    """Load and split scikit-learn's digits.

    Raises:
        ModuleNotFoundError: scikit-learn is not installed (``pip install 'modfsm[demo]'``).
    """
    try:
        from sklearn.datasets import load_digits
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            "modfsm run needs scikit-learn for its built-in data set. To fix, "
            "pip install 'modfsm[demo]' (or scikit-learn)."
        ) from error
    bunch = load_digits()
    images = torch.tensor(bunch.data, dtype=torch.float32) / 16.0
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(_SPLIT_SEED))
    test, train = order[:TEST_IMAGES], order[TEST_IMAGES:]
    return Digits(images[train], labels[train], images[test], labels[test])


class DigitsMLP(torch.nn.Module):
    """64 -> 256 -> 256 -> 10, ReLU between: layers ``fc1``, ``fc2``, ``fc3``."""

    def __init__(self, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(64, hidden)
        self.fc2 = torch.nn.Linear(hidden, hidden)
        self.fc3 = torch.nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        out: torch.Tensor = self.fc3(x)
        return out

    def describe(self) -> str:
        """``DigitsMLP 64-256-256-10 (83,466 parameters)``."""
        sizes = [self.fc1.in_features, self.fc1.out_features, self.fc2.out_features, 10]
        count = sum(p.numel() for p in self.parameters())
        return f"DigitsMLP {'-'.join(map(str, sizes))} ({count:,} parameters)"
