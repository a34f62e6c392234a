"""Training augmentation on model-frame tensors (research.training.augment)."""

from __future__ import annotations


def test_flip_and_rotate_is_one_exact_resampling() -> None:
    import math

    import numpy as np
    import tensorflow as tf

    from research.training.augment import flip_and_rotate

    images = tf.random.stateless_uniform([3, 32, 32, 2], seed=(1, 2))
    ones, zeros = tf.ones([3]), tf.zeros([3])
    np.testing.assert_array_equal(flip_and_rotate(images, ones, zeros).numpy(), images.numpy())
    np.testing.assert_array_equal(flip_and_rotate(images, -ones, zeros).numpy(),
                                  tf.reverse(images, axis=[2]).numpy())
    quarter = flip_and_rotate(images, ones, tf.fill([3], math.pi / 2)).numpy()
    assert min(np.abs(quarter - tf.image.rot90(images, k).numpy()).max() for k in (1, 3)) < 1e-4
    # Mirrored and turned by a quarter: a transpose of the image, whichever way it turns.
    both = flip_and_rotate(images, -ones, tf.fill([3], math.pi / 2)).numpy()
    transposed = tf.transpose(images, [0, 2, 1, 3]).numpy()
    assert min(np.abs(both - t).max() for t in (transposed, transposed[:, ::-1, ::-1])) < 1e-4


def test_flip_and_rotate_scales_in_the_same_resampling() -> None:
    import numpy as np
    import tensorflow as tf

    from research.training.augment import flip_and_rotate

    images = tf.random.stateless_uniform([2, 32, 32, 1], seed=(3, 4))
    ones, zeros = tf.ones([2]), tf.zeros([2])
    # Half size, no turn: output pixel (x, y) reads input (2x + 0.5, 2y + 0.5), the mean of a 2x2 block.
    half = flip_and_rotate(images, ones, zeros, 16).numpy()
    np.testing.assert_allclose(half, tf.nn.avg_pool2d(images, 2, 2, "VALID").numpy(), atol=1e-6)
    mirrored = flip_and_rotate(images, -ones, zeros, 16).numpy()
    np.testing.assert_allclose(mirrored, half[:, :, ::-1], atol=1e-6)


def test_flip_and_rotate_zoom_shrinks_about_the_centre() -> None:
    import numpy as np
    import tensorflow as tf

    from research.training.augment import flip_and_rotate

    square = np.zeros((1, 33, 33, 1), np.float32)
    square[0, 8:25, 8:25] = 1.0  # 17 px wide, centred
    images = tf.constant(square)
    ones, zeros = tf.ones([1]), tf.zeros([1])
    np.testing.assert_array_equal(flip_and_rotate(images, ones, zeros, zoom=ones).numpy(), square)
    half = flip_and_rotate(images, ones, zeros, zoom=tf.fill([1], 0.5)).numpy()[0, ..., 0]
    rows = np.flatnonzero(half[:, 16] > 0.5)
    assert rows.min() >= 11 and rows.max() <= 21 and abs(rows.mean() - 16) < 0.6  # half as wide, centred


def test_random_intensity_curve_is_monotone_and_keeps_black_and_white() -> None:
    import numpy as np
    import tensorflow as tf

    from research.training.augment import random_intensity_curve

    tf.random.set_seed(7)
    ramp = np.linspace(0.0, 1.0, 101, dtype=np.float32)
    x = tf.constant(np.tile(ramp[None, :, None, None], (16, 1, 1, 1)))
    out = random_intensity_curve(x, share=1.0).numpy()[..., 0, 0]
    assert np.all(np.diff(out, axis=1) >= -1e-6)  # monotone: anatomy keeps its order
    np.testing.assert_allclose(out[:, 0], 0.0, atol=1e-6)  # air stays black
    np.testing.assert_allclose(out[:, -1], 1.0, atol=1e-5)
    assert np.abs(out - ramp).max() > 0.05  # and it does remap the levels
    np.testing.assert_array_equal(random_intensity_curve(x, share=0.0).numpy(), x.numpy())
