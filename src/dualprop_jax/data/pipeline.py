"""How data is fed: shuffled epochs of batches, padded evaluation batches, jitted augmentation.

Where data comes from (IDX, npz, TFDS) is :mod:`dualprop_jax.data`. The epoch order is a pure
function of ``(seed, epoch)``, so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from dualprop_jax.data import Dataset, StandardisedImages
from dualprop_jax.errors import DataError


def check_batch_size(batch_size: int, num_train: int) -> None:
    """Raise DataError unless ``1 <= batch_size <= num_train``."""
    if batch_size < 1:
        raise DataError(f"batch size must be >= 1, got {batch_size}; pass e.g. --batch-size 64")
    if batch_size > num_train:
        raise DataError(
            f"batch size {batch_size} is larger than the training set ({num_train} examples), "
            f"so an epoch would have no batches; use a smaller --batch-size (at most "
            f"{num_train})"
        )


def epoch_batches(num_examples: int, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of one shuffled epoch as a ``(num_batches, batch_size)`` array.

    The last ``num_examples % batch_size`` shuffled examples are dropped.
    """
    check_batch_size(batch_size, num_examples)
    num_batches = num_examples // batch_size
    return rng.permutation(num_examples)[: num_batches * batch_size].reshape(
        num_batches, batch_size
    )


def epoch_order(num_examples: int, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """The batches of training epoch ``epoch`` (1-based): :func:`epoch_batches` seeded by
    ``(seed, epoch)``, the order ``train_and_evaluate`` uses."""
    return epoch_batches(num_examples, batch_size, np.random.default_rng([seed, epoch]))


def augment_batch(key: jax.Array, x: jax.Array, pad: int = 4, flip: bool = True) -> jax.Array:
    """Random crop after zero padding by ``pad`` pixels, and random horizontal flip.

    ``x`` is an NHWC batch; each example gets its own crop offset in ``[0, 2*pad]`` per axis
    and is mirrored left-right with probability 1/2 when ``flip``. Returns the same shape and
    dtype. Pure and jittable with ``pad`` and ``flip`` static, e.g.
    ``jax.jit(augment_batch, static_argnames=("pad", "flip"))``.
    """
    if x.ndim != 4:
        raise DataError(
            f"augment_batch expects an NHWC batch (rank 4), got shape {x.shape}; "
            "disable augmentation for flat inputs"
        )
    if pad < 0:
        raise DataError(f"augment_batch pad must be >= 0, got {pad}")
    n, h, w, c = x.shape
    crop_key, flip_key = jax.random.split(key)
    if pad > 0:
        padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * pad + 1)

        def crop(image: jax.Array, offset: jax.Array) -> jax.Array:
            return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

        x = jax.vmap(crop)(padded, offsets)
    if flip:
        mirror = jax.random.bernoulli(flip_key, 0.5, (n,))
        x = jnp.where(mirror[:, None, None, None], x[:, :, ::-1, :], x)
    return x


_augment = jax.jit(augment_batch)


def step_key(seed: int, global_step: int) -> jax.Array:
    """The augmentation key of a training step: ``fold_in(key(seed), global_step)``."""
    return jax.random.fold_in(jax.random.key(seed), global_step)


def batches(
    dataset: Dataset,
    batch_size: int,
    *,
    split: str = "train",
    seed: int = 0,
    epochs: int | None = 1,
    first_epoch: int = 1,
    augment: bool | None = None,
) -> Iterator[tuple[np.ndarray | jax.Array, np.ndarray]]:
    """Batches ``(x, y)`` of a dataset split.

    ``split="train"``: ``epochs`` epochs (None: without end), each shuffled by
    :func:`epoch_order` from ``(seed, epoch)`` and without its last partial batch, the batches
    ``train_and_evaluate`` trains on. ``augment`` (default: the dataset's own choice, on for
    CIFAR-like images) applies :func:`augment_batch` with the key of each step
    (:func:`step_key`), on the device. Other splits: one pass in order, the last batch partial.
    Images are standardised float32, taken batch by batch with :meth:`Dataset.images`.
    """
    x, y = dataset.split(split)
    if split != "train":
        for start in range(0, len(x), batch_size):
            rows = slice(start, start + batch_size)
            yield dataset.images(split, rows), y[rows]
        return
    augment = dataset.augment if augment is None else augment
    if augment and x.ndim != 4:
        raise DataError(f"augmentation needs images (H, W, C); data has shape {x.shape[1:]}.")
    steps = len(x) // max(batch_size, 1)
    epoch = first_epoch
    while epochs is None or epoch < first_epoch + epochs:
        for i, idx in enumerate(epoch_order(len(x), batch_size, seed, epoch)):
            xb = dataset.images("train", idx)
            if augment:
                xb = _augment(step_key(seed, (epoch - 1) * steps + i), xb)
            yield xb, y[idx]
        epoch += 1


def padded_batches(
    x: np.ndarray | StandardisedImages, y: np.ndarray, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Fixed-size evaluation batches ``(x, y, mask)``: the last one zero-padded, ``mask`` False
    on the padding (one compiled evaluation step serves every batch). ``x`` may be any
    sliceable array; :class:`~dualprop_jax.data.StandardisedImages` are standardised one batch
    at a time."""
    for start in range(0, len(x), batch_size):
        xb = np.asarray(x[start : start + batch_size])
        yb = np.asarray(y[start : start + batch_size])
        pad = batch_size - len(xb)
        mask = np.arange(batch_size) < len(xb)
        if pad:
            xb = np.concatenate([xb, np.zeros((pad, *xb.shape[1:]), xb.dtype)])
            yb = np.concatenate([yb, np.zeros((pad, *yb.shape[1:]), yb.dtype)])
        yield xb, yb, mask


__all__ = [
    "augment_batch",
    "batches",
    "check_batch_size",
    "epoch_batches",
    "epoch_order",
    "padded_batches",
    "step_key",
]
