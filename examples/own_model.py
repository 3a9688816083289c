"""Your own Flax NNX model, loss and data through hpjax's Python API.

Two studies, each a population of trials trained as one compiled program with early stopping
and a checkpoint of every trial at its early-stop point:

- a small residual MLP regressor on scikit-learn's diabetes data (mean squared error), its
  width swept as an architecture and its learning rate drawn from a log range;
- a CNN classifier of your own on scikit-learn's 8x8 digits (cross-entropy).

    python examples/own_model.py --workdir runs/own
"""

from __future__ import annotations

import argparse
import os

import jax
import numpy as np
from flax import nnx
from sklearn.datasets import load_diabetes, load_digits

import hpjax


class ResidualMLP(nnx.Module):
    """in -> width, then ``blocks`` residual blocks (x + W2 relu(W1 x)), then one output."""

    def __init__(self, in_features: int, width: int, blocks: int, *, rngs: nnx.Rngs):
        self.stem = nnx.Linear(in_features, width, rngs=rngs)
        self.inner = nnx.List([nnx.Linear(width, width, rngs=rngs) for _ in range(blocks)])
        self.outer = nnx.List([nnx.Linear(width, width, rngs=rngs) for _ in range(blocks)])
        self.head = nnx.Linear(width, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.stem(x)
        for inner, outer in zip(self.inner, self.outer, strict=True):
            h = h + outer(nnx.relu(inner(h)))
        return self.head(nnx.relu(h))


class DigitsCNN(nnx.Module):
    """Two 3x3 convolutions on 8x8 images, global average pooling, a linear classifier."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 16, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(16, 32, (3, 3), rngs=rngs)
        self.head = nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = x.reshape(x.shape[0], 8, 8, 1)
        h = nnx.relu(self.conv1(h))
        h = nnx.relu(self.conv2(h))
        return self.head(h.mean(axis=(1, 2)))


def split(x, y, test_fraction: float = 0.2, seed: int = 0):
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(len(x) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def diabetes(quick: bool) -> hpjax.Dataset:
    x, y = load_diabetes(return_X_y=True)
    x = (x - x.mean(0)) / x.std(0)
    y = ((y - y.mean()) / y.std())[:, None]  # standardised, so the loss is in units of variance
    return hpjax.from_arrays(*split(x, y), task="regression", name="diabetes")


def digits() -> hpjax.Dataset:
    x, y = load_digits(return_X_y=True)
    return hpjax.from_arrays(*split(x / 16.0, y), name="digits")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="directory for both studies' outputs")
    parser.add_argument("--quick", action="store_true", help="a few steps, for tests")
    args = parser.parse_args(argv)
    steps = dict(num_steps=60, eval_every=20) if args.quick else dict(num_steps=3000)

    def residual_mlp(rngs: nnx.Rngs, width: int = 64, blocks: int = 2) -> nnx.Module:
        return ResidualMLP(10, width, blocks, rngs=rngs)

    # Keyword arguments of the factory are its architecture: model_grid sweeps them (one
    # compiled population per width); the rates are 8 quasi-random points of a log range.
    regression = hpjax.train(
        residual_mlp,
        diabetes(args.quick),
        os.path.join(args.workdir, "diabetes"),
        space={"learning_rate": hpjax.loguniform(1e-4, 1e-2)},
        num_samples=4 if args.quick else 8,
        model_grid={"width": (32, 64)},
        **steps,
    )

    def digits_cnn(rngs: nnx.Rngs) -> nnx.Module:
        return DigitsCNN(rngs=rngs)

    classification = hpjax.train(
        digits_cnn,
        digits(),
        os.path.join(args.workdir, "digits"),
        learning_rates=(3e-4, 1e-3, 3e-3, 1e-2),
        **steps,
    )
    for name, study, metric in (
        ("diabetes (residual MLP, MSE)", regression, "test_mae"),
        ("digits (CNN, cross-entropy)", classification, "test_accuracy"),
    ):
        best = study.best
        print(
            f"{name}: best trial {best.trial} learning_rate={best['learning_rate']:.3g} "
            f"seed={best['seed']} best_val_loss={best['best_val_loss']:.4f} "
            f"{metric}={best[metric]:.4f} at step {best['best_step']} ({best['status']})"
        )
    best = classification.best
    restored = best.restore()
    x_test, y_test = digits().x_test, digits().y_test
    accuracy = float(np.mean(np.argmax(restored.module(x_test), -1) == y_test))
    print(
        f"restored digits trial {best.trial} at step {restored.metadata['best_step']}: "
        f"{type(restored.module).__name__} with test accuracy {accuracy:.4f}"
    )


if __name__ == "__main__":
    main()
