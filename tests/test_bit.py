"""kitlib.bit: the BiT-HyperRule against bit_hyperrule.py, batch scaling, the Keras 3 schedule inside the
optimizer, MixUp, the deterministic input pipeline, backbone + zero head (Keras 3 on JAX), resolve_backbone."""

import hashlib
import os
import socket
import time

import numpy as np
import pytest

from kitlib import backbones, bit, resnetv2
from kitlib.compat import keras, tf

# ============ the rule, value by value (google-research/big_transfer bit_hyperrule.py) ============


@pytest.mark.parametrize("hw, expected", [
    ((95, 97), (160, 128)),   # area 9215 < 9216: small, although the 97 edge is >= 96
    ((97, 95), (160, 128)),
    ((96, 96), (512, 480)),   # area 9216: not below 96*96
    ((95, 200), (512, 480)),  # an edge < 96 but a large area: the seed's edge test got this wrong
    ((32, 32), (160, 128)),
    ((600, 800), (512, 480)),  # Cassava
    ((1, 9215), (160, 128)),
])
def test_resolution_is_decided_by_area_below_96x96(hw, expected):
    assert bit.get_resolution(hw) == expected


@pytest.mark.parametrize("size, alpha", [(1, 0.0), (17_117, 0.0), (19_999, 0.0), (20_000, 0.1),
                                         (21_397, 0.1), (1_281_167, 0.1)])
def test_mixup_alpha_is_0_below_20k_examples_else_0_1(size, alpha):
    assert bit.get_mixup(size) == alpha


@pytest.mark.parametrize("size, supports", [
    (19_999, [100, 200, 300, 400, 500]),
    (20_000, [500, 3000, 6000, 9000, 10_000]),
    (21_397, [500, 3000, 6000, 9000, 10_000]),
    (499_999, [500, 3000, 6000, 9000, 10_000]),
    (500_000, [500, 6000, 12_000, 18_000, 20_000]),
])
def test_schedule_tiers_match_the_official_table(size, supports):
    assert bit.get_schedule(size) == supports


@pytest.mark.parametrize("step, lr", [(0, 0.0), (50, 0.0015), (99, 0.00297), (100, 0.003), (200, 0.003),
                                      (201, 0.0003), (300, 0.0003), (301, 0.00003), (401, 0.000003),
                                      (499, 0.000003), (500, None), (10_000, None)])
def test_get_lr_warms_up_then_divides_by_10_after_each_support(step, lr):
    got = bit.get_lr(step, 1_000)
    assert got == pytest.approx(lr, rel=1e-9) if lr is not None else got is None


def test_keras_schedule_at_batch_512_equals_get_lr_at_every_step():
    rule = bit.HyperRule((600, 800), 17_117, batch_size=512)
    steps = np.arange(rule.total_steps)
    expected = np.array([bit.get_lr(int(s), 17_117) for s in steps])
    np.testing.assert_allclose(np.asarray(rule.lr_schedule(steps)), expected, rtol=1e-6, atol=0)
    assert bit.get_lr(rule.total_steps, 17_117) is None


def test_cassava_full_set_gets_10k_steps_with_mixup_but_an_80_percent_split_500_without():
    full = bit.HyperRule((600, 800), 21_397)
    split = bit.HyperRule((600, 800), int(21_397 * 0.8))
    assert (full.total_steps, full.mixup_alpha, full.warmup_steps) == (10_000, 0.1, 500)
    assert (split.total_steps, split.mixup_alpha, split.warmup_steps) == (500, 0.0, 100)
    assert (full.resize, full.crop) == (512, 480)


# ============ batch scaling: every phase at the same fraction of the run ============


@pytest.mark.parametrize("size", [5_000, 21_397, 1_000_000])
def test_warmup_and_decays_fall_at_the_same_fraction_for_batch_64_128_512(size):
    rules = {b: bit.HyperRule((600, 800), size, batch_size=b) for b in (64, 128, 512)}
    for b, rule in rules.items():
        assert rule.total_steps == rules[512].total_steps * 512 // b
        assert rule.warmup_steps / rule.total_steps == rules[512].warmup_steps / rules[512].total_steps
        assert [x / rule.total_steps for x in rule.boundaries] == \
               [x / rules[512].total_steps for x in rules[512].boundaries]
        assert rule.base_lr == pytest.approx(0.003 * b / 512)  # linear lr scaling
    # the whole normalised curve lr(f * T) / peak is the same at every batch size (f on the B=512 step grid)
    fractions = np.arange(rules[512].total_steps) / rules[512].total_steps
    curves = [np.asarray(rule.lr_schedule(np.round(fractions * rule.total_steps))) / rule.base_lr
              for rule in rules.values()]
    for curve in curves[1:]:
        np.testing.assert_allclose(curve, curves[0], rtol=1e-5, atol=1e-7)


def test_at_batch_64_most_of_the_run_is_not_at_a_thousandth_of_the_lr():
    rule = bit.HyperRule((600, 800), 10_000, batch_size=64)  # the colab's slip put ~90 % at lr / 1000 here
    lr = np.asarray(rule.lr_schedule(np.arange(rule.total_steps)))
    assert np.mean(lr <= rule.base_lr / 1000 * 1.001) == pytest.approx(0.2, abs=0.01)
    assert np.mean(lr >= rule.base_lr * 0.999) == pytest.approx(0.2, abs=0.01)


def test_steps_override_keeps_phase_fractions_and_optimizer_is_sgd_momentum_0_9():
    rule = bit.HyperRule((600, 800), 100, batch_size=16, total_steps=20, resolution=(160, 128))
    assert (rule.warmup_steps, rule.boundaries, rule.total_steps) == (4, [8, 12, 16], 20)
    assert (rule.resize, rule.crop) == (160, 128)
    opt = rule.optimizer()
    assert isinstance(opt, keras.optimizers.SGD) and opt.momentum == pytest.approx(0.9)
    assert opt.get_config()["learning_rate"]["config"] == rule.lr_schedule.get_config()  # the rule's schedule
    assert float(rule.lr_schedule(2)) == pytest.approx(rule.base_lr / 2)


def test_the_optimizer_steps_with_the_rule_learning_rate_at_its_iteration():
    rule = bit.HyperRule((600, 800), 100, batch_size=512, total_steps=500)  # the 500-step tier, unscaled
    opt = rule.optimizer()
    variable = keras.Variable(np.zeros(3, np.float32))
    opt.build([variable])
    seen = {}
    for step in range(301):
        if step in (0, 50, 100, 200, 201, 300):
            seen[step] = float(opt.learning_rate)  # the schedule at the optimizer's iteration count
        opt.apply_gradients([(np.ones(3, np.float32), variable)])
    assert seen == pytest.approx({0: 0.0, 50: 0.0015, 100: 0.003, 200: 0.003, 201: 0.0003, 300: 0.0003}, rel=1e-6)
    assert seen == pytest.approx({s: bit.get_lr(s, 100) for s in seen}, rel=1e-6)


def test_rule_rejects_impossible_arguments_with_a_message():
    with pytest.raises(ValueError, match="dataset_size"):
        bit.HyperRule((600, 800), 0)
    with pytest.raises(ValueError, match="crop"):
        bit.HyperRule((600, 800), 100, resolution=(64, 128))


def test_rule_table_is_computed_from_the_rule():
    table = bit.rule_table([("all", (600, 800), 21_397, 512), ("80 %", (600, 800), 17_117, 512)])
    assert "| all | 600×800 | 21,397 | 512 | 512→480 | 0.1 | 500 | 3,000, 6,000, 9,000 | 10,000 |" in table
    assert "| 80 % | 600×800 | 17,117 | 512 | 512→480 | 0 | 100 | 200, 300, 400 | 500 |" in table


# ============ MixUp ============


def _batch(b=4, c=5, size=6):
    images = tf.random.stateless_uniform([b, size, size, 3], seed=[1, 2])
    labels = tf.one_hot(tf.range(b) % c, c)
    return images, labels


def test_mixup_partner_is_the_reversed_batch_with_one_lambda_per_batch():
    images, labels = _batch(b=4)  # classes 0,1,2,3 against reversed 3,2,1,0: all pairs distinct
    mixed_x, mixed_y = bit.mixup(images, labels, alpha=0.4, seed=3)
    lam = mixed_y.numpy()[np.arange(4), np.arange(4)]  # weight on each example's own class
    assert np.allclose(lam, lam[0])  # one lambda for the whole batch
    expected = lam[0] * images + (1 - lam[0]) * images[::-1]
    np.testing.assert_allclose(mixed_x.numpy(), expected.numpy(), atol=1e-6)
    again_x, _ = bit.mixup(images, labels, alpha=0.4, seed=3)  # stateless: same seed, same lambda
    np.testing.assert_array_equal(again_x.numpy(), mixed_x.numpy())


def test_mixup_labels_still_sum_to_one():
    images, labels = _batch(b=8)
    for seed in range(5):
        _, mixed_y = bit.mixup(images, labels, alpha=0.1, seed=seed)
        np.testing.assert_allclose(tf.reduce_sum(mixed_y, -1).numpy(), 1.0, atol=1e-6)
        assert np.all(mixed_y.numpy() >= 0)


@pytest.mark.parametrize("alpha", [0.1, 1.0])
def test_mixup_lambda_follows_beta_alpha_alpha(alpha):
    n = 4_000
    lams = next(iter(tf.data.Dataset.range(n).map(lambda i: bit.sample_beta(alpha, tf.stack([i, i + 7])))
                     .batch(n))).numpy()
    assert lams.dtype == np.float32 and np.all((lams >= 0) & (lams <= 1)) and not np.any(np.isnan(lams))
    # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)): 0.208 at a = 0.1 (mostly near 0 or 1), 1/12 at a = 1
    assert lams.mean() == pytest.approx(0.5, abs=0.03)
    assert lams.var() == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.08)


def test_mixup_with_alpha_0_is_the_identity():
    images, labels = _batch()
    mixed_x, mixed_y = bit.mixup(images, labels, alpha=0.0)
    assert mixed_x is images and mixed_y is labels
    with pytest.raises(ValueError, match="alpha"):
        bit.mixup(images, labels, alpha=-1)


# ============ input pipeline ============


def _dict_dataset(n=12, h=40, w=56, classes=3):
    images = np.random.default_rng(0).integers(0, 256, [n, h, w, 3], dtype=np.uint8)
    return tf.data.Dataset.from_tensor_slices({"image": images, "label": np.arange(n, dtype=np.int32) % classes})


def test_train_batches_are_static_crops_in_unit_range_with_mixup_when_the_rule_says_so():
    rule = bit.HyperRule((40, 56), 50_000, batch_size=4, resolution=(36, 32))  # big data -> MixUp 0.1
    batches = iter(bit.train_dataset(_dict_dataset(), rule, num_classes=3, seed=0))
    for _ in range(4):
        images, labels = next(batches)
        assert images.shape == (4, 32, 32, 3) and labels.shape == (4, 3)
        assert images.dtype == tf.float32 and 0.0 <= float(tf.reduce_min(images)) <= float(tf.reduce_max(images)) <= 1
        np.testing.assert_allclose(tf.reduce_sum(labels, -1).numpy(), 1.0, atol=1e-6)
    soft = [np.any((y.numpy() > 1e-6) & (y.numpy() < 1 - 1e-6))
            for _, y in bit.train_dataset(_dict_dataset(), rule, num_classes=3, seed=0).take(20)]
    assert any(soft)  # MixUp ran (at alpha 0.1 many lambdas are within float32 of 0 or 1: not every batch)


def test_train_batches_are_a_function_of_the_seed():
    rule = bit.HyperRule((40, 56), 50_000, batch_size=4, resolution=(36, 32))

    def first_batches(seed):
        return [(x.numpy(), y.numpy()) for x, y in bit.train_dataset(_dict_dataset(), rule, 3, seed=seed).take(5)]

    runs = [first_batches(0), first_batches(0), first_batches(1)]
    for (x0, y0), (x1, y1) in zip(runs[0], runs[1]):
        np.testing.assert_array_equal(x0, x1)
        np.testing.assert_array_equal(y0, y1)
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(runs[0], runs[2]))


def test_pipeline_decodes_encoded_images_after_shuffling():
    pixels = np.random.default_rng(1).integers(0, 256, [6, 30, 44, 3], dtype=np.uint8)
    encoded = [tf.io.encode_png(p).numpy() for p in pixels]
    dataset = tf.data.Dataset.from_tensor_slices({"image": encoded, "label": np.zeros(6, np.int32)})
    rule = bit.HyperRule((30, 44), 100, batch_size=3, resolution=(36, 32))
    images, _ = next(iter(bit.train_dataset(dataset, rule, num_classes=2, seed=0)))
    assert images.shape == (3, 32, 32, 3)
    evaluated, _ = next(iter(bit.eval_dataset(dataset, 32, 6, 2)))
    np.testing.assert_allclose(evaluated.numpy(), bit.preprocess_eval(pixels, 32).numpy(), atol=1e-6)


def test_eval_batches_are_resized_to_the_crop_size_with_one_hot_labels():
    images, labels = next(iter(bit.eval_dataset(_dict_dataset(), crop=32, batch_size=5, num_classes=3)))
    assert images.shape == (5, 32, 32, 3) and set(np.unique(labels.numpy())) == {0.0, 1.0}
    assert float(tf.reduce_max(images)) <= 1.0


def test_padded_eval_batches_have_one_static_shape_and_zero_weight_padding():
    plain = list(bit.eval_dataset(_dict_dataset(n=12), crop=16, batch_size=5, num_classes=3))
    padded = list(bit.eval_dataset(_dict_dataset(n=12), crop=16, batch_size=5, num_classes=3, pad=True))
    assert [len(x) for x, _ in plain] == [5, 5, 2]
    assert all(x.shape == (5, 16, 16, 3) and y.shape == (5, 3) and w.shape == (5,) for x, y, w in padded)
    np.testing.assert_array_equal(np.concatenate([w for _, _, w in padded]), [1] * 12 + [0] * 3)
    np.testing.assert_array_equal(padded[-1][0][:2], plain[-1][0])  # real rows first, unchanged
    assert not np.any(padded[-1][0][2:]) and not np.any(padded[-1][1][2:])


def test_random_flip_and_crop_vary_between_calls_unless_seeded():
    image = tf.constant(np.arange(40 * 40 * 3).reshape(40, 40, 3) % 256, tf.uint8)
    assert len({bit.preprocess_train(image, 40, 32).numpy().tobytes() for _ in range(8)}) > 1
    assert len({bit.preprocess_train(image, 40, 32, seed=[5, 1]).numpy().tobytes() for _ in range(3)}) == 1
    assert len({bit.preprocess_train(image, 40, 32, seed=[5, i]).numpy().tobytes() for i in range(8)}) > 1


# ============ backbone + zero head (Keras 3 on JAX) ============


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory):
    """A small_cnn backbone saved as .keras (F = 128)."""
    return bit.make_tiny_backbone(str(tmp_path_factory.mktemp("tiny") / "backbone.keras"))


def _images(n, size=32, seed=0):
    return np.random.default_rng(seed).random([n, size, size, 3], dtype=np.float32)


def test_tiny_backbone_file_is_seeded_and_loads_as_a_trainable_keras_model(tiny_backbone, tmp_path):
    again = bit.make_tiny_backbone(str(tmp_path / "again.keras"))
    first, second = backbones.load(tiny_backbone), backbones.load(again)
    assert first.trainable and first.trainable_weights
    for a, b in zip(first.get_weights(), second.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert first(_images(2)).shape == (2, 128)
    with pytest.raises(ValueError, match="unknown tiny backbone"):
        bit.make_tiny_backbone(str(tmp_path / "x.keras"), name="vgg")


def test_classifier_head_starts_at_zero_and_fit_moves_every_backbone_weight(tiny_backbone):
    model = bit.build_classifier(tiny_backbone, num_classes=3, image_size=32)
    head, backbone = model.get_layer("head"), model.layers[1]
    assert not np.any(head.kernel.numpy()) and not np.any(head.bias.numpy())
    images = _images(24)
    np.testing.assert_allclose(keras.ops.softmax(model(images)), 1 / 3, atol=1e-6)  # uniform at start

    before = [w.numpy().copy() for w in backbone.trainable_weights]
    labels = np.eye(3, dtype=np.float32)[np.arange(24) % 3]
    model.compile(keras.optimizers.SGD(0.5, momentum=0.9), keras.losses.CategoricalCrossentropy(from_logits=True))
    model.fit(images, labels, batch_size=8, epochs=2, verbose=0)
    changed = [np.abs(w.numpy() - b).max() for w, b in zip(backbone.trainable_weights, before)]
    assert len(changed) == 9 and min(changed) > 0  # every backbone variable moved: full fine-tuning
    assert np.any(head.kernel.numpy())


@pytest.mark.slow
def test_float32_backbone_computes_in_bfloat16_under_a_mixed_policy_with_float32_logits(tiny_backbone):
    keras.config.set_dtype_policy("mixed_bfloat16")  # what runtime.setup sets on a TPU
    try:
        model = bit.build_classifier(tiny_backbone, num_classes=3, image_size=32)
        backbone = model.layers[1]
        convs = [layer for layer in backbone.layers if isinstance(layer, keras.layers.Conv2D)]
        assert convs and all(layer.compute_dtype == "bfloat16" for layer in convs)
        assert all(w.dtype == "float32" for w in model.weights)  # variables stay float32
        assert backbone(_images(2)).dtype == "float32"  # the pooled features stay float32 (FLOAT32_LAYERS)
        model.compile(keras.optimizers.SGD(0.1), keras.losses.CategoricalCrossentropy(from_logits=True))
        history = model.fit(_images(8), np.eye(3, dtype=np.float32)[np.arange(8) % 3], batch_size=4, verbose=0)
        assert np.isfinite(history.history["loss"][-1])
        assert model(_images(1)).dtype == "float32"  # the head's logits
        # before training, the rebuilt backbone holds the file's weights: its bfloat16 features are the
        # float32 ones to bfloat16 precision
        features = np.asarray(bit.build_classifier(tiny_backbone, 3, 32).layers[1](_images(4)), np.float32)
    finally:
        keras.config.set_dtype_policy("float32")
    reference = np.asarray(backbones.load(tiny_backbone)(_images(4)))
    np.testing.assert_allclose(features, reference, rtol=0.05, atol=0.02 * np.abs(reference).max())


@pytest.mark.slow
def test_bit_tiny_resnetv2_backbone_trains_in_the_classifier(tmp_path):
    path = bit.make_tiny_backbone(str(tmp_path / "bit.keras"), name="bit_tiny")
    keras.config.set_dtype_policy("mixed_bfloat16")  # a float32 file fine-tuned on a TPU
    try:
        mixed = bit.build_classifier(path, num_classes=2, image_size=32).layers[1]
    finally:
        keras.config.set_dtype_policy("float32")
    policies = {layer.name: layer.compute_dtype for layer in mixed.layers}
    assert policies["block1_unit01_b_conv"] == "bfloat16"
    assert [policies[name] for name in resnetv2.FLOAT32_LAYERS] == ["float32"] * 3  # pinned, as resnetv2 builds
    model = bit.build_classifier(path, num_classes=2, image_size=32)
    assert model.output_shape == (None, 2)
    before = [w.numpy().copy() for w in model.layers[1].trainable_weights]
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), keras.losses.CategoricalCrossentropy(from_logits=True))
    model.fit(_images(8), np.eye(2, dtype=np.float32)[np.arange(8) % 2], batch_size=4, epochs=2, verbose=0)
    assert all(np.abs(w.numpy() - b).max() > 0 for w, b in zip(model.layers[1].trainable_weights, before))


# ============ resolve_backbone: attached / cached copies, offline failures ============


def _fake_saved_model(folder):
    """A folder that looks like a TF2 SavedModel to the resolver (it only checks for saved_model.pb)."""
    os.makedirs(folder, exist_ok=True)
    open(os.path.join(folder, "saved_model.pb"), "wb").close()
    return str(folder)


def test_unreachable_handle_fails_fast_with_advice(tmp_path):
    probed = []

    def offline(host):
        probed.append(host)
        return False

    start = time.monotonic()
    with pytest.raises(ValueError, match="Add Input.*Models.*local directory"):
        backbones.load("https://tfhub.dev/google/bit/m-r50x1/1", cache_dir=str(tmp_path),
                       input_root=str(tmp_path), reachable=offline)
    assert probed == ["tfhub.dev"]  # one probe, no retries
    with pytest.raises(ValueError, match="unreachable"):
        bit.resolve_backbone("google/bit/tensorFlow2/m-r50x1", cache_dir=str(tmp_path),
                             input_root=str(tmp_path), reachable=offline)
    assert probed[-1] == "www.kaggle.com"
    with pytest.raises(ValueError, match="unreachable"):
        bit.resolve_backbone("gs://my-bucket/bit_m-r50x1.tar.gz", cache_dir=str(tmp_path), reachable=offline)
    assert probed[-1] == "storage.googleapis.com"
    assert time.monotonic() - start < 5


def test_default_network_probe_is_one_connect_with_a_short_timeout(monkeypatch):
    calls = []

    def refuse(address, timeout=None):
        calls.append((address, timeout))
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    assert bit._can_connect("tfhub.dev") is False
    assert calls == [(("tfhub.dev", 443), bit._PROBE_TIMEOUT_S)] and bit._PROBE_TIMEOUT_S <= 5


def test_attached_kaggle_model_and_hub_cache_are_used_without_the_network(tmp_path):
    def no_network(host):
        raise AssertionError("the network must not be probed when a local copy exists")

    attached = _fake_saved_model(tmp_path / "input" / "bit" / "tensorflow2" / "m-r50x1" / "1")
    for handle in ("google/bit/tensorFlow2/m-r50x1", "https://tfhub.dev/google/bit/m-r50x1/1",
                   "https://www.kaggle.com/models/google/bit/TensorFlow2/m-r50x1/1"):
        assert bit.resolve_backbone(handle, cache_dir=str(tmp_path), input_root=str(tmp_path / "input"),
                                    reachable=no_network) == attached

    url = "https://tfhub.dev/google/bit/s-r50x1/1"
    cached = _fake_saved_model(tmp_path / "cache" / hashlib.sha1(url.encode()).hexdigest())  # tensorflow_hub's layout
    assert bit.resolve_backbone(url, cache_dir=str(tmp_path / "cache"), input_root=str(tmp_path / "input"),
                                reachable=no_network) == cached


def test_local_paths_that_are_not_savedmodels_fail_with_a_message(tmp_path):
    with pytest.raises(ValueError, match="saved_model.pb"):
        bit.resolve_backbone(str(tmp_path))
    with pytest.raises(ValueError, match="no such directory"):
        bit.resolve_backbone(str(tmp_path / "missing"))
