"""Classification losses for fine-tuning: cross-entropy with label smoothing, and the bi-tempered
logistic loss for noisy labels, in ``keras.ops`` (run on JAX here, any Keras 3 backend in principle).

Bi-tempered loss: Amid, Warmuth, Anil, Koren, "Robust Bi-Tempered Logistic Loss Based on Bregman
Divergences", NeurIPS 2019 (arXiv 1906.03361). Two temperatures replace the softmax + log pair:
t2 > 1 gives the tempered softmax a heavier tail (far-away wrong labels cost less), t1 < 1 makes
the loss bounded (a mislabelled example cannot dominate the gradient). t1 = t2 = 1 is softmax
cross-entropy. The Cassava winners used t1 = 0.8, t2 = 1.4 against its noisy labels.

All functions compute in float32, whatever the Keras mixed-precision policy (logits in bfloat16
or float16 are cast first), and return one loss per example; Keras reduces them over the batch,
which inside a data-parallel compiled step is the GLOBAL batch.
"""

from kitlib.compat import keras

ops = keras.ops

T1_CASSAVA = 0.8  # bi-tempered "t1" (bounded loss) used by the Cassava winners
T2_CASSAVA = 1.4  # bi-tempered "t2" (heavy-tailed softmax)
# Fixed-point iterations for the tempered-softmax normaliser. Amid et al.'s code uses 5: rows then sum
# to 1 within 4e-5 at t2 = 1.4 but only 1.5e-3 at t2 = 2; 10 gives < 2e-5 up to t2 = 2 at negligible cost.
_FIXED_POINT_ITERS = 10
LOSSES = ("ce", "bitempered")


def _f32(x):
    return ops.cast(x, "float32")


def check_label_smoothing(label_smoothing):
    """Raise ValueError unless eps is in [0, 1)."""
    if not 0.0 <= float(label_smoothing) < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")


def smooth_labels(labels, label_smoothing=0.0):
    """Label smoothing: y' = (1 - eps) * y + eps / C.

    Args:
        labels: [B, C] one-hot or soft labels (each row sums to 1).
        label_smoothing: eps in [0, 1).
    Returns:
        [B, C] float32, rows still summing to 1.
    """
    check_label_smoothing(label_smoothing)
    labels = _f32(labels)
    if label_smoothing == 0.0:
        return labels
    num_classes = labels.shape[-1]  # static in every model the kit builds
    return labels * (1.0 - label_smoothing) + label_smoothing / num_classes


def cross_entropy(labels, logits, label_smoothing=0.0):
    """Softmax cross-entropy -sum_i y'_i log softmax(a)_i with optional label smoothing.

    Args:
        labels: [B, C] one-hot or soft labels (MixUp gives soft ones).
        logits: [B, C] any float dtype (computed in float32).
        label_smoothing: eps in [0, 1), see ``smooth_labels``.
    Returns:
        [B] float32 per-example loss.
    """
    labels = smooth_labels(labels, label_smoothing)
    return -ops.sum(labels * ops.log_softmax(_f32(logits), axis=-1), axis=-1)


# ============ tempered log / exp (Amid et al. 2019, eq. 1-2) ============


def log_t(x, t):
    """Tempered logarithm log_t(x) = (x^(1-t) - 1) / (1 - t); log_1 = log. x > 0 (x = 0 allowed for t < 1).

    Args: x any shape (float32 result); t a Python float.
    """
    x = _f32(x)
    if t == 1.0:
        return ops.log(x)
    return (ops.power(x, 1.0 - t) - 1.0) / (1.0 - t)


def exp_t(x, t):
    """Tempered exponential exp_t(x) = [1 + (1 - t) x]_+^(1/(1-t)); exp_1 = exp. Inverse of log_t.

    Args: x any shape (float32 result); t a Python float.
    """
    x = _f32(x)
    if t == 1.0:
        return ops.exp(x)
    return ops.power(ops.maximum(1.0 + (1.0 - t) * x, 0.0), 1.0 / (1.0 - t))


def _normalizer_heavy_tail(activations, t, normalizer_iters):
    """lambda(a) [B, 1] with sum_i exp_t(a_i - lambda) = 1 for t > 1, by Amid et al.'s fixed point.

    With mu = max(a) and a~ = a - mu <= 0, the identity exp_t(u) exp_t(v) = exp_t(u + v + (1-t)uv)
    gives sum_i exp_t(a~_i - lambda~) = exp_t(-lambda~) * sum_i exp_t(a~_i Z^(1-t)) with
    Z = 1 / exp_t(-lambda~); so Z is the fixed point of Z <- sum_i exp_t(a~_i Z^(1-t)), and
    lambda = mu - log_t(1 / Z).
    """
    mu = ops.max(activations, axis=-1, keepdims=True)
    shifted = activations - mu  # a~ <= 0, so exp_t stays in (0, 1]
    z = ops.sum(exp_t(shifted, t), axis=-1, keepdims=True)  # Z at the start: >= 1
    for _ in range(normalizer_iters):
        z = ops.sum(exp_t(shifted * ops.power(z, 1.0 - t), t), axis=-1, keepdims=True)
    return mu - log_t(1.0 / z, t)


def tempered_softmax(activations, t, normalizer_iters=_FIXED_POINT_ITERS):
    """Tempered softmax y^_i = exp_t(a_i - lambda(a)), normalised so sum_i y^_i = 1.

    Args:
        activations: [B, C] logits (computed in float32).
        t: temperature t2 >= 1 (1 is the ordinary softmax; > 1 has a heavier tail).
        normalizer_iters: fixed-point iterations for the normaliser.
    Returns:
        [B, C] float32 probabilities.
    """
    if t < 1.0:
        raise ValueError(f"tempered_softmax supports t2 >= 1 (heavy tail), got t2={t}; "
                         f"the Cassava setting is t2={T2_CASSAVA}, t2=1 is the ordinary softmax")
    activations = _f32(activations)
    if t == 1.0:
        return ops.softmax(activations, axis=-1)
    return exp_t(activations - _normalizer_heavy_tail(activations, t, normalizer_iters), t)


def bi_tempered_logistic_loss(labels, logits, t1=T1_CASSAVA, t2=T2_CASSAVA, label_smoothing=0.0,
                              normalizer_iters=_FIXED_POINT_ITERS):
    """Bi-tempered logistic loss (Amid et al. 2019): the Bregman divergence of log_t1 between y and y^.

    L(y, y^) = sum_i [ y_i (log_t1 y_i - log_t1 y^_i) - (y_i^(2-t1) - y^_i^(2-t1)) / (2 - t1) ],
    y^ = tempered_softmax(logits, t2). It is >= 0, 0 iff y^ = y, equals softmax cross-entropy minus
    the label entropy at t1 = t2 = 1 (so exactly cross-entropy for one-hot labels), and is bounded by
    1/(1-t1) + 1/(2-t1) for t1 < 1.

    Args:
        labels: [B, C] one-hot or soft labels.
        logits: [B, C] any float dtype (computed in float32).
        t1: temperature of the log, in (0, 1] (< 1: bounded loss). Cassava: 0.8.
        t2: temperature of the softmax, >= 1 (> 1: heavy tail). Cassava: 1.4.
        label_smoothing: eps in [0, 1), see ``smooth_labels``.
        normalizer_iters: fixed-point iterations for the tempered softmax.
    Returns:
        [B] float32 per-example loss.
    """
    if not 0.0 < t1 <= 1.0:
        raise ValueError(f"t1 must be in (0, 1], got {t1}; the Cassava setting is t1={T1_CASSAVA}")
    labels = smooth_labels(labels, label_smoothing)
    probs = tempered_softmax(logits, t2, normalizer_iters)
    # y log_t1(y) is 0 where y = 0; log_1(0) = -inf would give 0 * inf = nan (also in the gradient),
    # so the log sees 1 there and the product is masked.
    positive = labels > 0.0
    safe_labels = ops.where(positive, labels, ops.ones_like(labels))
    label_term = ops.where(positive, labels * log_t(safe_labels, t1), ops.zeros_like(labels))
    loss = (label_term - labels * log_t(probs, t1)
            - ops.power(labels, 2.0 - t1) / (2.0 - t1) + ops.power(probs, 2.0 - t1) / (2.0 - t1))
    return ops.sum(loss, axis=-1)


# ============ Keras loss functions ============


def make_loss(name="ce", label_smoothing=0.0, t1=T1_CASSAVA, t2=T2_CASSAVA):
    """A per-example loss ``fn(y_true, logits) -> [B]`` for ``model.compile`` (the model outputs logits).

    Args:
        name: "ce" (softmax cross-entropy) or "bitempered" (Amid et al. 2019).
        label_smoothing: eps in [0, 1) for either loss.
        t1, t2: bi-tempered temperatures (ignored for "ce").
    Returns:
        A function of (y_true [B, C] one-hot/soft, logits [B, C]) returning [B] float32; Keras
        (``keras.losses.LossFunctionWrapper``) reduces it over the batch.
    """
    check_label_smoothing(label_smoothing)  # validate now, not inside fit()
    if name == "ce":
        def ce_loss(y_true, logits):
            return cross_entropy(y_true, logits, label_smoothing)
        return ce_loss
    if name == "bitempered":
        if not 0.0 < t1 <= 1.0 or t2 < 1.0:
            raise ValueError(f"bi-tempered loss needs 0 < t1 <= 1 <= t2, got t1={t1}, t2={t2}")

        def bitempered_loss(y_true, logits):
            return bi_tempered_logistic_loss(y_true, logits, t1, t2, label_smoothing)
        return bitempered_loss
    raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")


class PerExampleLoss(keras.losses.Loss):
    """A Keras ``Loss`` around a per-example function (``make_loss``), reduced over the batch.

    The default reduction "mean_with_sample_weight" divides the weighted sum by the sum of the weights,
    so zero-weight padding (the last validation batch) changes nothing; without weights it is the mean.
    """

    def __init__(self, fn, name=None, reduction="mean_with_sample_weight"):
        super().__init__(name=name or fn.__name__, reduction=reduction)
        self.fn = fn

    def call(self, y_true, y_pred):
        return self.fn(y_true, y_pred)
