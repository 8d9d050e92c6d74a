"""kitlib.bit.inputs: MixUp and the deterministic input pipeline."""

import numpy as np
import pytest

from kitlib.bit import hyperrule, inputs
from kitlib.compat import tf

# ============ MixUp ============


def _batch(b=4, c=5, size=6):
    images = tf.random.stateless_uniform([b, size, size, 3], seed=[1, 2])
    labels = tf.one_hot(tf.range(b) % c, c)
    return images, labels


def test_mixup_partner_is_the_neighbour_with_one_lambda_per_batch():
    images, labels = _batch(b=4)  # classes 0,1,2,3 against neighbours 1,0,3,2: all pairs distinct
    mixed_x, mixed_y = inputs.mixup(images, labels, alpha=0.4, seed=3)
    lam = mixed_y.numpy()[np.arange(4), np.arange(4)]  # weight on each example's own class
    assert np.allclose(lam, lam[0])  # one lambda for the whole batch
    expected = lam[0] * images + (1 - lam[0]) * tf.gather(images, [1, 0, 3, 2])
    np.testing.assert_allclose(mixed_x.numpy(), expected.numpy(), atol=1e-6)
    again_x, _ = inputs.mixup(images, labels, alpha=0.4, seed=3)  # stateless: same seed, same lambda
    np.testing.assert_array_equal(again_x.numpy(), mixed_x.numpy())


def test_mixup_labels_still_sum_to_one():
    images, labels = _batch(b=8)
    for seed in range(5):
        _, mixed_y = inputs.mixup(images, labels, alpha=0.1, seed=seed)
        np.testing.assert_allclose(tf.reduce_sum(mixed_y, -1).numpy(), 1.0, atol=1e-6)
        assert np.all(mixed_y.numpy() >= 0)


@pytest.mark.parametrize("alpha", [0.1, 1.0])
def test_mixup_lambda_follows_beta_alpha_alpha(alpha):
    n = 4_000
    lams = next(iter(tf.data.Dataset.range(n).map(lambda i: inputs.sample_beta(alpha, tf.stack([i, i + 7])))
                     .batch(n))).numpy()
    assert lams.dtype == np.float32 and np.all((lams >= 0) & (lams <= 1)) and not np.any(np.isnan(lams))
    # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)): 0.208 at a = 0.1 (mostly near 0 or 1), 1/12 at a = 1
    assert lams.mean() == pytest.approx(0.5, abs=0.03)
    assert lams.var() == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.08)


def test_mixup_with_alpha_0_is_the_identity():
    images, labels = _batch()
    mixed_x, mixed_y = inputs.mixup(images, labels, alpha=0.0)
    assert mixed_x is images and mixed_y is labels
    with pytest.raises(ValueError, match="alpha"):
        inputs.mixup(images, labels, alpha=-1)


# ============ input pipeline ============


def _dict_dataset(n=12, h=40, w=56, classes=3):
    images = np.random.default_rng(0).integers(0, 256, [n, h, w, 3], dtype=np.uint8)
    return tf.data.Dataset.from_tensor_slices({"image": images, "label": np.arange(n, dtype=np.int32) % classes})


def test_train_batches_are_static_crops_in_unit_range_with_mixup_when_the_rule_says_so():
    rule = hyperrule.HyperRule((40, 56), 50_000, batch_size=4, resolution=(36, 32))  # big data -> MixUp 0.1
    batches = iter(inputs.train_dataset(_dict_dataset(), rule, num_classes=3, seed=0))
    for _ in range(4):
        images, labels = next(batches)
        assert images.shape == (4, 32, 32, 3) and labels.shape == (4, 3)
        assert images.dtype == tf.float32 and 0.0 <= float(tf.reduce_min(images)) <= float(tf.reduce_max(images)) <= 1
        np.testing.assert_allclose(tf.reduce_sum(labels, -1).numpy(), 1.0, atol=1e-6)
    soft = [np.any((y.numpy() > 1e-6) & (y.numpy() < 1 - 1e-6))
            for _, y in inputs.train_dataset(_dict_dataset(), rule, num_classes=3, seed=0).take(20)]
    assert any(soft)  # MixUp ran (at alpha 0.1 many lambdas are within float32 of 0 or 1: not every batch)


def test_train_batches_are_a_function_of_the_seed():
    rule = hyperrule.HyperRule((40, 56), 50_000, batch_size=4, resolution=(36, 32))

    def first_batches(seed):
        return [(x.numpy(), y.numpy()) for x, y in inputs.train_dataset(_dict_dataset(), rule, 3, seed=seed).take(5)]

    runs = [first_batches(0), first_batches(0), first_batches(1)]
    for (x0, y0), (x1, y1) in zip(runs[0], runs[1]):
        np.testing.assert_array_equal(x0, x1)
        np.testing.assert_array_equal(y0, y1)
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(runs[0], runs[2]))


def test_pipeline_decodes_encoded_images_after_shuffling():
    pixels = np.random.default_rng(1).integers(0, 256, [6, 30, 44, 3], dtype=np.uint8)
    encoded = [tf.io.encode_png(p).numpy() for p in pixels]
    dataset = tf.data.Dataset.from_tensor_slices({"image": encoded, "label": np.zeros(6, np.int32)})
    rule = hyperrule.HyperRule((30, 44), 100, batch_size=3, resolution=(36, 32))
    images, _ = next(iter(inputs.train_dataset(dataset, rule, num_classes=2, seed=0)))
    assert images.shape == (3, 32, 32, 3)
    evaluated, _ = next(iter(inputs.eval_dataset(dataset, 32, 6, 2)))
    np.testing.assert_allclose(evaluated.numpy(), inputs.preprocess_eval(pixels, 32).numpy(), atol=1e-6)


def test_eval_batches_are_resized_to_the_crop_size_with_one_hot_labels():
    images, labels = next(iter(inputs.eval_dataset(_dict_dataset(), crop=32, batch_size=5, num_classes=3)))
    assert images.shape == (5, 32, 32, 3) and set(np.unique(labels.numpy())) == {0.0, 1.0}
    assert float(tf.reduce_max(images)) <= 1.0


def test_padded_eval_batches_have_one_static_shape_and_zero_weight_padding():
    plain = list(inputs.eval_dataset(_dict_dataset(n=12), crop=16, batch_size=5, num_classes=3))
    padded = list(inputs.eval_dataset(_dict_dataset(n=12), crop=16, batch_size=5, num_classes=3, pad=True))
    assert [len(x) for x, _ in plain] == [5, 5, 2]
    assert all(x.shape == (5, 16, 16, 3) and y.shape == (5, 3) and w.shape == (5,) for x, y, w in padded)
    np.testing.assert_array_equal(np.concatenate([w for _, _, w in padded]), [1] * 12 + [0] * 3)
    np.testing.assert_array_equal(padded[-1][0][:2], plain[-1][0])  # real rows first, unchanged
    assert not np.any(padded[-1][0][2:]) and not np.any(padded[-1][1][2:])


def test_random_flip_and_crop_vary_between_calls_unless_seeded():
    image = tf.constant(np.arange(40 * 40 * 3).reshape(40, 40, 3) % 256, tf.uint8)
    assert len({inputs.preprocess_train(image, 40, 32).numpy().tobytes() for _ in range(8)}) > 1
    assert len({inputs.preprocess_train(image, 40, 32, seed=[5, 1]).numpy().tobytes() for _ in range(3)}) == 1
    assert len({inputs.preprocess_train(image, 40, 32, seed=[5, i]).numpy().tobytes() for i in range(8)}) > 1


def test_mixup_partners_pair_neighbours_and_keep_an_odd_last_row_alone():
    assert np.asarray(inputs.mixup_partners(6)).tolist() == [1, 0, 3, 2, 5, 4]
    assert np.asarray(inputs.mixup_partners(5)).tolist() == [1, 0, 3, 2, 4]


def test_a_process_gets_its_rows_of_the_batches_one_process_makes():
    rule = hyperrule.HyperRule((40, 56), 50_000, batch_size=8, resolution=(36, 32))  # MixUp on
    whole = [(x.numpy(), y.numpy()) for x, y in inputs.train_dataset(_dict_dataset(), rule, 3, seed=2).take(3)]
    for start, stop in ((0, 4), (4, 8), (2, 6)):
        part = inputs.train_dataset(_dict_dataset(), rule, 3, seed=2, rows=(start, stop)).take(3)
        for (x, y), (wx, wy) in zip(part, whole):
            np.testing.assert_allclose(x.numpy(), wx[start:stop], atol=1e-6)
            np.testing.assert_allclose(y.numpy(), wy[start:stop], atol=1e-6)
    with pytest.raises(ValueError, match="must start and end even"):
        inputs.train_dataset(_dict_dataset(), rule, 3, rows=(1, 5))
