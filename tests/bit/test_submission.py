"""kitlib.bit.submission: probabilities averaged over the views, submission.csv written and checked."""

import csv
import os

import numpy as np
import pytest

from kitlib.bit import export, submission
from kitlib.bit.export import load_classifier, save_classifier
from kitlib.compat import keras, tf
from kitlib.data import tfrecords as data_tfrecords
from kitlib.data import writing

_SIDE, _GAIN = 8, 8.0  # the orientation model's input side and its logit for a white left half


SAMPLE_IDS_HEAD = ["2082241388.jpg", "2525358034.jpg", "2271891758.jpg"]  # sample_submission.csv's first rows

@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """An untrained 5-class classifier at 32 px (outputs differ per image, which is all these tests need)."""
    return export.make_stand_in_classifier(str(tmp_path_factory.mktemp("model")), image_size=32)

def _rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))

@pytest.mark.parametrize("ids, labels, use_sample, message", [
    (["a.jpg", "b.jpg"], [1, 5], False, r"label 5 is not a class index 0..4"),
    (["a.jpg", "b.jpg"], [1, -1], False, r"label -1 is not a class index"),
    (["a.jpg", "b.jpg"], [1, 2.0], False, r"label 2.0 is not a class index"),
    (["a.jpg", "b.jpg", "a.jpg"], [0, 1, 2], False, r"duplicate image ids: a.jpg"),
    (["a.jpg", "b.jpg"], [0, 1, 2], False, r"2 image ids but 3 labels"),
    ([], [], False, r"no rows"),
    (SAMPLE_IDS_HEAD, [0, 1, 2], True, r"12 missing .* 0 unknown"),
    (None, None, True, r"0 missing \(-\), 1 unknown \(extra.jpg\)"),
], ids=["label-too-big", "negative-label", "float-label", "duplicate-id", "length-mismatch", "empty",
        "missing-ids", "unknown-id"])
def test_malformed_submission_is_refused_and_nothing_is_written(tmp_path, sample_dir, ids, labels, use_sample,
                                                                message):
    sample = os.path.join(sample_dir, "sample_submission.csv")
    if ids is None:  # every sample id plus one that is not in the test set
        ids = submission.read_sample_ids(sample) + ["extra.jpg"]
        labels = [0] * len(ids)
    out = tmp_path / "sub" / "submission.csv"
    with pytest.raises(ValueError, match=message):
        submission.write_submission(ids, labels, str(out), sample if use_sample else None)
    assert not (tmp_path / "sub").exists() or not any((tmp_path / "sub").iterdir())

def test_a_refused_submission_leaves_an_existing_file_untouched(tmp_path):
    out = tmp_path / "submission.csv"
    submission.write_submission(["a.jpg"], [3], str(out))
    before = out.read_bytes()
    with pytest.raises(ValueError, match="not a class index"):
        submission.write_submission(["a.jpg", "b.jpg"], [0, 7], str(out))
    assert out.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["submission.csv"]

def test_rows_follow_sample_submission_order_with_the_competition_header(tmp_path, sample_dir):
    sample = os.path.join(sample_dir, "sample_submission.csv")
    sample_ids = submission.read_sample_ids(sample)
    labels = {i: n % 5 for n, i in enumerate(sorted(sample_ids))}
    shuffled = sorted(sample_ids, reverse=True)
    out = submission.write_submission(shuffled, [np.int64(labels[i]) for i in shuffled],
                                      str(tmp_path / "submission.csv"), sample)
    rows = _rows(out)
    assert rows[0] == ["image_id", "label"]
    assert [r[0] for r in rows[1:]] == sample_ids
    assert [int(r[1]) for r in rows[1:]] == [labels[i] for i in sample_ids]
    assert submission.validate_submission(out, sample) == (sample_ids, [labels[i] for i in sample_ids])

def test_validate_submission_rejects_a_file_with_a_wrong_header(tmp_path):
    path = tmp_path / "submission.csv"
    path.write_text("id,label\na.jpg,1\n")
    with pytest.raises(ValueError, match="header must be 'image_id,label'"):
        submission.validate_submission(str(path))

def _left_half_model():
    """logits [GAIN * mean of the left half of the red channel, 0, 0]: the output depends on a left-right flip."""
    inputs = keras.Input([_SIDE, _SIDE, 3])
    dense = keras.layers.Dense(3)
    model = keras.Model(inputs, dense(keras.layers.Flatten()(inputs)))
    kernel = np.zeros([_SIDE, _SIDE, 3, 3], np.float32)
    kernel[:, : _SIDE // 2, 0, 0] = _GAIN / (_SIDE * _SIDE // 2)
    dense.set_weights([kernel.reshape(-1, 3), np.zeros(3, np.float32)])
    return model

def test_tta_averages_the_probabilities_of_the_views_not_the_logits(tmp_path):
    image = np.zeros([_SIDE, _SIDE, 3], np.uint8)
    image[:, : _SIDE // 2] = 255  # left half white: identity sees logit GAIN, the mirror image sees 0
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "left.png").write_bytes(tf.io.encode_png(image).numpy())  # PNG: lossless, the halves stay exact
    model = load_classifier(save_classifier(_left_half_model(), str(tmp_path / "model"), list("abc"), _SIDE))
    seen = tf.nn.softmax([[_GAIN, 0.0, 0.0]]).numpy()[0]  # probabilities of the upright view
    mirrored = np.full(3, 1 / 3)  # the left-right mirror sees a black left half: uniform

    def probs(tta):
        ids, p = submission.predict(model, str(folder), tta=tta)
        assert ids == ["left.png"]
        return p[0]

    np.testing.assert_allclose(probs("none"), seen, atol=1e-6)
    np.testing.assert_allclose(probs(["identity", "hflip"]), (seen + mirrored) / 2, atol=1e-6)
    np.testing.assert_allclose(probs("flip"), (2 * seen + mirrored) / 3, atol=1e-6)  # vflip keeps the left half
    logit_average = tf.nn.softmax([[_GAIN / 2, 0.0, 0.0]]).numpy()[0]
    assert abs(probs(["identity", "hflip"])[0] - logit_average[0]) > 0.2

def test_jpeg_folder_and_tfrecords_give_the_same_ids_and_probabilities(tiny_model_dir, sample_dir):
    model = load_classifier(tiny_model_dir)
    from_images = submission.predict(model, os.path.join(sample_dir, "test_images"), tta="flip+crops", batch_size=4)
    from_records = submission.predict(model, os.path.join(sample_dir, "test_tfrecords", "*.tfrec"),
                                      tta="flip+crops", batch_size=6)
    assert from_images[0] == sorted(os.listdir(os.path.join(sample_dir, "test_images")))
    assert sorted(from_records[0]) == from_images[0] and len(from_records[0]) == 15
    order = [from_records[0].index(i) for i in from_images[0]]
    np.testing.assert_allclose(from_records[1][order], from_images[1], atol=1e-6)
    np.testing.assert_allclose(from_images[1].sum(axis=1), 1.0, atol=1e-5)

def test_predict_and_write_gives_a_valid_submission_in_sample_order(tiny_model_dir, sample_dir, tmp_path):
    out = str(tmp_path / "submission.csv")
    result = submission.predict_and_write(tiny_model_dir, sample_dir, out, tta="none", verbose=0)
    sample_ids = submission.read_sample_ids(os.path.join(sample_dir, "sample_submission.csv"))
    assert result.image_ids == sample_ids == [r[0] for r in _rows(out)[1:]]
    np.testing.assert_array_equal(result.labels, result.probs.argmax(axis=1))
    written = submission.validate_submission(out, os.path.join(sample_dir, "sample_submission.csv"))
    assert written == (sample_ids, list(result.labels))

def test_a_model_with_other_class_names_is_refused(tmp_path, sample_dir):
    model_dir = export.make_stand_in_classifier(str(tmp_path / "model"), class_names=list("abcde"), image_size=16)
    with pytest.raises(ValueError, match="differ from .*label_num_to_disease_map.json"):
        submission.predict_and_write(model_dir, sample_dir, str(tmp_path / "s.csv"), verbose=0)
    assert not (tmp_path / "s.csv").exists()

def test_predict_refuses_test_shards_without_image_names(tmp_path, tiny_model_dir):
    image = tf.io.encode_jpeg(np.zeros([8, 8, 3], np.uint8)).numpy()
    shards = writing.write_tfrecords([{"image": image}], str(tmp_path), labeled=False)
    with pytest.raises(data_tfrecords.DataError, match="no 'image_name'"):
        submission.predict(tiny_model_dir, shards)
