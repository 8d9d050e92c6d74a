"""kitlib.bit: the BiT-HyperRule against bit_hyperrule.py, batch scaling, MixUp, input pipeline, backbones."""

import hashlib
import os
import socket
import time

import numpy as np
import pytest
import tensorflow as tf

from kitlib import bit
from kitlib.compat import keras

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
    np.testing.assert_allclose(rule.lr_schedule(steps).numpy(), expected, rtol=1e-6, atol=0)
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
    curves = [rule.lr_schedule(np.round(fractions * rule.total_steps)).numpy() / rule.base_lr
              for rule in rules.values()]
    for curve in curves[1:]:
        np.testing.assert_allclose(curve, curves[0], rtol=1e-5, atol=1e-7)


def test_at_batch_64_most_of_the_run_is_not_at_a_thousandth_of_the_lr():
    rule = bit.HyperRule((600, 800), 10_000, batch_size=64)  # the colab's slip put ~90 % at lr / 1000 here
    lr = rule.lr_schedule(np.arange(rule.total_steps)).numpy()
    assert np.mean(lr <= rule.base_lr / 1000 * 1.001) == pytest.approx(0.2, abs=0.01)
    assert np.mean(lr >= rule.base_lr * 0.999) == pytest.approx(0.2, abs=0.01)


def test_steps_override_keeps_phase_fractions_and_optimizer_is_sgd_momentum_0_9():
    rule = bit.HyperRule((600, 800), 100, batch_size=16, total_steps=20, resolution=(160, 128))
    assert (rule.warmup_steps, rule.boundaries, rule.total_steps) == (4, [8, 12, 16], 20)
    assert (rule.resize, rule.crop) == (160, 128)
    opt = rule.optimizer()
    assert isinstance(opt, keras.optimizers.SGD) and opt.momentum == pytest.approx(0.9)
    assert opt.get_config()["learning_rate"]["config"] == rule.lr_schedule.get_config()  # the rule's schedule
    assert float(rule.lr_schedule(tf.constant(2))) == pytest.approx(rule.base_lr / 2)


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


def test_mixup_labels_still_sum_to_one():
    images, labels = _batch(b=8)
    for seed in range(5):
        _, mixed_y = bit.mixup(images, labels, alpha=0.1, seed=seed)
        np.testing.assert_allclose(tf.reduce_sum(mixed_y, -1).numpy(), 1.0, atol=1e-6)
        assert np.all(mixed_y.numpy() >= 0)


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
    images, labels = next(iter(bit.train_dataset(_dict_dataset(), rule, num_classes=3, seed=0)))
    assert images.shape == (4, 32, 32, 3) and labels.shape == (4, 3)
    assert images.dtype == tf.float32 and 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 1.0
    np.testing.assert_allclose(tf.reduce_sum(labels, -1).numpy(), 1.0, atol=1e-6)
    assert np.any((labels.numpy() > 0) & (labels.numpy() < 1))  # soft labels: MixUp ran


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


def test_random_flip_and_crop_vary_between_calls():
    image = tf.constant(np.arange(40 * 40 * 3).reshape(40, 40, 3) % 256, tf.uint8)
    outs = {bit.preprocess_train(image, 40, 32).numpy().tobytes() for _ in range(8)}
    assert len(outs) > 1


# ============ backbones ============


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory):
    return bit.make_tiny_backbone(str(tmp_path_factory.mktemp("tiny") / "backbone"), width=4)


def test_tiny_hub_savedmodel_loads_trainable_through_load_backbone(tiny_backbone):
    layer = bit.load_backbone(tiny_backbone)
    features = layer(tf.zeros([2, 32, 32, 3]))
    assert features.shape == (2, 8)
    assert layer.trainable and len(layer.trainable_weights) == 4


def test_classifier_head_starts_at_zero_and_fit_changes_the_backbone_weights(tiny_backbone):
    model = bit.build_classifier(bit.load_backbone(tiny_backbone), num_classes=3, image_size=32)
    head = model.get_layer("head")
    assert not np.any(head.kernel.numpy()) and not np.any(head.bias.numpy())
    images = tf.random.stateless_uniform([24, 32, 32, 3], seed=[0, 1])
    np.testing.assert_allclose(tf.nn.softmax(model(images)).numpy(), 1 / 3, atol=1e-6)  # uniform at start

    backbone = model.get_layer("backbone")
    before = [w.numpy().copy() for w in backbone.trainable_weights]
    labels = tf.one_hot(tf.range(24) % 3, 3)
    model.compile(keras.optimizers.SGD(0.5, momentum=0.9), keras.losses.CategoricalCrossentropy(from_logits=True))
    model.fit(images, labels, batch_size=8, epochs=3, verbose=0)
    changed = [np.abs(w.numpy() - b).max() for w, b in zip(backbone.trainable_weights, before)]
    assert min(changed) > 0  # every backbone variable moved: full fine-tuning, not only the head
    assert np.any(head.kernel.numpy())


def test_backbone_and_head_stay_float32_under_a_mixed_precision_policy(tiny_backbone):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")  # what runtime.set_mixed_precision picks on TPU
    try:
        model = bit.build_classifier(bit.load_backbone(tiny_backbone), num_classes=3, image_size=32)
        model.compile(keras.optimizers.SGD(0.1), keras.losses.CategoricalCrossentropy(from_logits=True))
        model.fit(tf.random.stateless_uniform([8, 32, 32, 3], seed=[5, 6]), tf.one_hot(tf.range(8) % 3, 3),
                  batch_size=4, verbose=0)
        assert model(tf.zeros([1, 32, 32, 3])).dtype == tf.float32  # hub SavedModels are float32 graphs
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_backbone_trains_under_a_two_replica_mirrored_strategy(tiny_backbone, mirrored_strategy):
    rule = bit.HyperRule((32, 32), 100, batch_size=8, total_steps=4, resolution=(36, 32))
    with mirrored_strategy.scope():
        model = bit.build_classifier(bit.load_backbone(tiny_backbone), num_classes=2, image_size=32)
        model.compile(rule.optimizer(), keras.losses.CategoricalCrossentropy(from_logits=True))
    kernel_before = model.get_layer("backbone").trainable_weights[0].numpy().copy()
    data = tf.data.Dataset.from_tensor_slices(
        (tf.random.stateless_uniform([32, 32, 32, 3], seed=[2, 3]), tf.one_hot(tf.range(32) % 2, 2))).batch(8)
    model.fit(data, epochs=1, verbose=0)
    assert np.abs(model.get_layer("backbone").trainable_weights[0].numpy() - kernel_before).max() > 0


def test_tiny_backbone_calibration_standardises_features_with_fixed_untrained_variables(tmp_path):
    images = tf.random.stateless_uniform([16, 24, 24, 3], seed=[4, 5])
    layer = bit.load_backbone(bit.make_tiny_backbone(str(tmp_path / "cal"), width=4, calibration_images=images,
                                                     feature_std=2.0))
    features = layer(images).numpy()
    np.testing.assert_allclose(features.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(features.std(0), 2.0, rtol=1e-2)
    assert len(layer.trainable_weights) == 4 and len(layer.non_trainable_weights) == 2  # shift/scale stay fixed


def test_unreachable_handle_fails_fast_with_advice(tmp_path):
    probed = []

    def offline(host):
        probed.append(host)
        return False

    start = time.monotonic()
    with pytest.raises(ValueError, match="Add Input.*Models.*local directory"):
        bit.load_backbone("https://tfhub.dev/google/bit/m-r50x1/1", cache_dir=str(tmp_path),
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


def test_attached_kaggle_model_and_hub_cache_are_used_without_the_network(tiny_backbone, tmp_path):
    def no_network(host):
        raise AssertionError("the network must not be probed when a local copy exists")

    attached = tmp_path / "input" / "bit" / "tensorflow2" / "m-r50x1" / "1"
    attached.parent.mkdir(parents=True)
    os.symlink(tiny_backbone, attached)
    for handle in ("google/bit/tensorFlow2/m-r50x1", "https://tfhub.dev/google/bit/m-r50x1/1",
                   "https://www.kaggle.com/models/google/bit/TensorFlow2/m-r50x1/1"):
        assert bit.resolve_backbone(handle, cache_dir=str(tmp_path), input_root=str(tmp_path / "input"),
                                    reachable=no_network) == str(attached)

    url = "https://tfhub.dev/google/bit/s-r50x1/1"
    cached = tmp_path / "cache" / hashlib.sha1(url.encode()).hexdigest()  # tensorflow_hub's cache layout
    cached.parent.mkdir()
    os.symlink(tiny_backbone, cached)
    assert bit.resolve_backbone(url, cache_dir=str(tmp_path / "cache"), input_root=str(tmp_path / "input"),
                                reachable=no_network) == str(cached)


def test_local_paths_that_are_not_savedmodels_fail_with_a_message(tmp_path):
    with pytest.raises(ValueError, match="saved_model.pb"):
        bit.load_backbone(str(tmp_path))
    with pytest.raises(ValueError, match="no such directory"):
        bit.load_backbone(str(tmp_path / "missing"))
