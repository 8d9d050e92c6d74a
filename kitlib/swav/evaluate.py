"""How good are frozen features: weighted kNN accuracy, a quick linear probe, a per-epoch kNN monitor.

Self-supervised features are judged on a labelled split with the backbone frozen: the weighted kNN
classifier of Wu et al. 2018 (arXiv 1805.01978; cosine similarity, k = 20, votes exp(s / 0.07),
as in DINO's ``eval_knn.py``) needs no training; the linear probe (logistic regression on the
features) is the quick version of SwAV's linear evaluation. With one labelled set and no test
split, kNN is leave-one-out and the probe is k-fold cross-validated.
"""

import numpy as np

from kitlib import sharding
from kitlib.compat import keras, tf

KNN_K = 20              # neighbours (InstDisc / DINO)
KNN_TEMPERATURE = 0.07  # vote weight exp(cosine / T)
PROBE_FOLDS = 5         # cross-validation folds when no test split is given


def _resize_center(image, size):
    """Shorter side to `size`, centre crop size x size; float32 [0, 1]."""
    image = tf.image.convert_image_dtype(image, tf.float32)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = size / tf.reduce_min(shape)
    new = tf.cast(tf.math.ceil(shape * scale), tf.int32)
    image = tf.image.resize(image, new, antialias=True)
    return tf.image.resize_with_crop_or_pad(image, size, size)


def _image_label(*element):
    element = element[0] if len(element) == 1 else element
    if isinstance(element, dict):
        element = (element["image"], element["label"])
    image, label = element[0], element[1]
    if image.dtype == tf.string:
        image = tf.ensure_shape(tf.io.decode_image(image, channels=3, expand_animations=False), [None, None, 3])
    return image, label


def extract_features(backbone, dataset, image_size=224, batch_size=64, max_images=None):
    """Frozen-backbone features of a labelled dataset: tf.data decodes and resizes, the Keras 3 model
    (JAX) computes on numpy batches.

    Args:
        backbone: Keras model, images float32 [N, S, S, 3] in [0, 1] -> features [N, F]; run in inference
            mode (BatchNorm uses its moving statistics) through ``predict_on_batch`` (compiled once: every
            batch is padded to ``batch_size`` rows, a multiple of the devices, and laid out over them when
            a ``DataParallel`` distribution is in force).
        dataset: unbatched ``kitlib.data.tfrecords.load_dataset`` dicts ("image" uint8 or bytes, "label") or
            (image, label) pairs.
        image_size: side S (shorter side resized to S, centre crop).
        batch_size: images per forward pass. max_images: optional cap (first N images).
    Returns:
        (features float32 [N, F], labels int64 [N]) numpy arrays, in the dataset's order.
    """
    pairs = dataset.map(_image_label, num_parallel_calls=tf.data.AUTOTUNE)
    if max_images:
        pairs = pairs.take(max_images)
    batch_size = sharding.rows_per_pass(batch_size)
    batches = (pairs.map(lambda im, y: (_resize_center(im, image_size), tf.cast(y, tf.int64)),
                         num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(tf.data.AUTOTUNE))
    features, labels = [], []
    for images, y in batches.as_numpy_iterator():
        features.append(sharding.predict_padded(backbone, images, batch_size).reshape(len(images), -1))
        labels.append(y.reshape(-1))
    if not labels:
        raise ValueError("extract_features: the dataset is empty")
    return np.concatenate(features), np.concatenate(labels).astype(np.int64)


def _unit(x):
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_accuracy(train_features, train_labels, test_features=None, test_labels=None, k=KNN_K,
                 temperature=KNN_TEMPERATURE):
    """Weighted kNN classification accuracy on cosine similarity.

    Each query takes its k most similar training features; class c scores Σ exp(s / T) over the
    neighbours of class c; the top class is the prediction.

    Args:
        train_features: [N, F] float. train_labels: [N] int.
        test_features, test_labels: [M, F], [M]; None: leave-one-out on the training set.
        k: neighbours (capped at the candidates available). temperature: T > 0.
    Returns:
        float accuracy in [0, 1].
    """
    train, y_train = _unit(train_features), np.asarray(train_labels).astype(np.int64)
    leave_one_out = test_features is None
    test, y_test = (train, y_train) if leave_one_out else (_unit(test_features), np.asarray(test_labels))
    if len(train) != len(y_train) or len(test) != len(y_test) or len(train) < 2:
        raise ValueError(f"need >= 2 training features with one label each and one label per query; "
                         f"got {len(train)} features / {len(y_train)} labels, {len(test)} queries / "
                         f"{len(y_test)} labels")
    sims = test @ train.T
    if leave_one_out:
        np.fill_diagonal(sims, -np.inf)  # an image may not vote for itself
    k = min(k, len(train) - int(leave_one_out))
    idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    weights = np.exp(np.take_along_axis(sims, idx, axis=1) / temperature)
    votes = np.zeros((len(test), int(y_train.max()) + 1))
    np.add.at(votes, (np.arange(len(test))[:, None], y_train[idx]), weights)
    return float(np.mean(votes.argmax(axis=1) == y_test))


def linear_probe_accuracy(train_features, train_labels, test_features=None, test_labels=None,
                          folds=PROBE_FOLDS, c=1.0, seed=0):
    """Accuracy of a logistic-regression probe on L2-normalised, standardised frozen features.

    Args:
        train_features, train_labels: [N, F], [N]. test_features, test_labels: optional test split;
            None: stratified `folds`-fold cross-validation on the training set.
        c: inverse L2 regularisation strength of sklearn's LogisticRegression. seed: fold shuffling.
    Returns:
        float accuracy in [0, 1] (mean over folds when cross-validating).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000))
    x, y = _unit(train_features), np.asarray(train_labels)
    if test_features is not None:
        return float(probe.fit(x, y).score(_unit(test_features), np.asarray(test_labels)))
    folds = min(folds, int(np.bincount(y).min()))
    if folds < 2:
        raise ValueError("cross-validating the probe needs >= 2 images of every class; pass a test split")
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(np.mean(cross_val_score(probe, x, y, cv=cv)))


def evaluate_backbone(backbone, dataset, image_size=224, test_dataset=None, k=KNN_K, probe=True,
                      max_images=None):
    """kNN (and linear-probe) accuracy of a frozen backbone: {"knn": acc, "linear": acc}.

    Args:
        backbone, image_size, max_images: as in `extract_features`. dataset: labelled training split.
        test_dataset: optional labelled test split (else leave-one-out / cross-validation).
        k: kNN neighbours. probe: also fit the linear probe.
    """
    x, y = extract_features(backbone, dataset, image_size, max_images=max_images)
    xt, yt = (extract_features(backbone, test_dataset, image_size, max_images=max_images)
              if test_dataset is not None else (None, None))
    result = {"knn": knn_accuracy(x, y, xt, yt, k=k)}
    if probe:
        result["linear"] = linear_probe_accuracy(x, y, xt, yt)
    return result


def compare_backbones(backbones, dataset, image_size=224, k=KNN_K, probe=True, max_images=None):
    """`evaluate_backbone` for each of {name: backbone}: {name: {"knn": acc, "linear": acc}}."""
    return {name: evaluate_backbone(b, dataset, image_size, k=k, probe=probe, max_images=max_images)
            for name, b in backbones.items()}


class KNNMonitor(keras.callbacks.Callback):
    """Adds ``knn_acc`` (frozen-feature kNN accuracy) to the epoch logs every `every` epochs.

    Put it before loggers (CSV, history) in the callback list so they record it. It reads the weights
    the backbone has at the end of the epoch (Keras writes the compiled step's state back to the
    variables before ``on_epoch_end``).

    Args:
        backbone: the backbone being trained. dataset: labelled split (see `extract_features`).
        image_size, k, max_images: as in `evaluate_backbone`. every: epochs between evaluations.
    """

    def __init__(self, backbone, dataset, image_size=224, every=1, k=KNN_K, max_images=2000, name="knn_acc"):
        super().__init__()
        self.backbone, self.dataset, self.image_size = backbone, dataset, image_size
        self.every, self.k, self.max_images, self.name = max(1, int(every)), k, max_images, name

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or (epoch + 1) % self.every:
            return
        x, y = extract_features(self.backbone, self.dataset, self.image_size, max_images=self.max_images)
        logs[self.name] = knn_accuracy(x, y, k=self.k)
