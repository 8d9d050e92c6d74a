"""SwAV: online clustering with swapped assignment prediction (Caron et al. 2020, arXiv 2006.09882).

Follows facebookresearch/swav ``main_swav.py``: a backbone and projection head embed every crop of an
image (z, unit norm); prototype scores z·c are turned into codes q by Sinkhorn-Knopp on the crops in
``crops_for_assign``, and every other crop must predict those codes (swapped prediction).

Written in backend-agnostic ``keras.ops`` and run on JAX. Under ``keras.distribution.DataParallel``
the compiled step sees the *global* batch, so Sinkhorn's sums, the loss and the projection head's
BatchNorm statistics (SwAV's SyncBN) are global with no all-reduce written here: 8 devices compute
what one computes on the whole batch. Numerics (Sinkhorn, loss, prototypes) are float32 under any
mixed-precision policy.
"""

import math

import numpy as np

from kitlib.compat import keras
from kitlib.swav.recipe import PAPER_PROTOTYPES as PAPER_NUM_PROTOTYPES

ops = keras.ops

_SCORE_LIMIT = 1e4            # |z·c| <= 1 for unit vectors; the clip only keeps scores/ε finite otherwise


# ============ Sinkhorn-Knopp ============

def sinkhorn(scores, epsilon=0.05, sinkhorn_iters=3, valid=None):
    """Equal-partition codes Q from prototype scores (swav ``distributed_sinkhorn``), in log domain.

    Official algorithm on Q = exp(scores / ε)ᵀ (K-by-B): repeat sinkhorn_iters times {rows /= row sums, /= K;
    columns /= column sums, /= B}, then Q *= B. Here log Q is kept and each normalisation is a
    logsumexp subtraction, so nothing under- or overflows even at ε = 0.01 (scores/ε in [-100, 100]).
    B is the whole batch the function sees: the global batch inside a DataParallel step.

    Args:
        scores: [B, K] float (any dtype, computed in float32), z·c cosine scores in [-1, 1]; no gradient.
        epsilon: ε > 0, entropy regularisation (paper 0.05; lower is sharper).
        sinkhorn_iters: Sinkhorn iterations >= 1 (paper 3).
        valid: optional [B] bool; False rows (e.g. an unfilled queue) count for nothing.
    Returns:
        codes: [B, K] float32 >= 0, each valid row summing to 1.
    """
    if epsilon <= 0 or sinkhorn_iters < 1:
        raise ValueError(f"sinkhorn needs epsilon > 0 and sinkhorn_iters >= 1, got {epsilon} and {sinkhorn_iters}.")
    if len(scores.shape) != 2:
        raise ValueError(f"scores must be [batch, prototypes], got shape {tuple(scores.shape)}.")
    scores = ops.clip(ops.cast(ops.stop_gradient(scores), "float32"), -_SCORE_LIMIT, _SCORE_LIMIT)
    log_q = scores / epsilon                       # log Qᵀ, kept B-by-K: row b = sample, column k = prototype
    num_k = scores.shape[1]
    if valid is None:
        count, row_mask = float(scores.shape[0]), 0.0
    else:
        valid = ops.cast(valid, "bool")
        count = ops.sum(ops.cast(valid, "float32"))
        row_mask = ops.where(valid, 0.0, -math.inf)[:, None]   # log 0 for ignored samples
    log_b = ops.log(count)                         # B: valid samples of the (global) batch
    log_k = math.log(num_k)
    # Q /= ΣQ is skipped: a constant factor, cancelled exactly by the first prototype normalisation.
    for _ in range(sinkhorn_iters):
        # normalise each prototype: its total weight over all samples must be 1/K
        log_q = log_q - (ops.logsumexp(log_q + row_mask, axis=0, keepdims=True) + log_k)
        # normalise each sample: its total weight must be 1/B
        log_q = log_q - (ops.logsumexp(log_q, axis=1, keepdims=True) + log_b)
    return ops.exp(log_q + log_b)                  # Q *= B: each sample's code sums to 1


# ============ swav loss ============

def swav_loss(scores, crops_for_assign=(0, 1), temperature=0.1, epsilon=0.05, sinkhorn_iters=3,
              queue_scores=None, queue_valid=None):
    """Swapped-prediction loss (swav ``main_swav.py``, ``train``), the mean over the batch.

    For each crop a in crops_for_assign: q = sinkhorn(scores[a]) (no gradient, queue rows prepended
    when given), and every other crop v pays -Σ_k q_k log softmax(scores[v] / τ)_k; averaged over the
    V - 1 predicting crops, then over the assigned crops and the images.

    Args:
        scores: [V, B, K] (or a list of V [B, K]) prototype scores of the V crops of B images.
        crops_for_assign: indices of the crops whose codes are targets (paper (0, 1): the big crops).
        temperature: τ of the softmax (paper 0.1). epsilon, sinkhorn_iters: as in `sinkhorn`.
        queue_scores: optional [len(crops_for_assign), L, K] scores of queued embeddings.
        queue_valid: optional bool, scalar or [L]: which queue rows to use (False before it is full).
    Returns:
        scalar float32.
    """
    if isinstance(scores, (list, tuple)):
        scores = ops.stack(list(scores))
    scores = ops.cast(scores, "float32")
    n_crops, batch = scores.shape[0], scores.shape[1]
    if n_crops < 2 or not crops_for_assign or any(not 0 <= a < n_crops for a in crops_for_assign):
        raise ValueError(f"swav_loss needs >= 2 crops and crops_for_assign within range(n_crops); got "
                         f"{n_crops} crops and crops_for_assign={tuple(crops_for_assign)}.")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    log_p = ops.log_softmax(scores / temperature, axis=-1)              # [V, B, K]
    per_image = 0.0
    for i, a in enumerate(crops_for_assign):
        assign_scores, valid = scores[a], None
        if queue_scores is not None:
            queued = ops.cast(queue_scores[i], "float32")
            queue_rows = ops.broadcast_to(ops.cast(queue_valid, "bool"), (queued.shape[0],))
            assign_scores = ops.concatenate([queued, assign_scores], axis=0)
            valid = ops.concatenate([queue_rows, ops.ones((batch,), "bool")], axis=0)
        q = ops.stop_gradient(sinkhorn(assign_scores, epsilon, sinkhorn_iters, valid)[-batch:])   # [B, K]
        others = [v for v in range(n_crops) if v != a]
        cross = -ops.sum(q[None] * ops.take(log_p, others, axis=0), axis=-1)   # [V-1, B]
        per_image = per_image + ops.mean(cross, axis=0)
    return ops.mean(per_image) / len(crops_for_assign)


# ============ projection head, prototypes ============

def projection_head(hidden_dim=2048, output_dim=128, name="projection_head"):
    """Linear(hidden) -> BN -> ReLU -> Linear(output) (swav ``resnet50.py``); hidden_dim 0: one Linear.

    The last layer runs in float32 so the L2-normalised embedding is float32 under mixed precision.
    Inside a DataParallel step BatchNorm's batch statistics cover the global batch (SyncBN).
    """
    layers = []
    if hidden_dim:
        layers += [keras.layers.Dense(hidden_dim), keras.layers.BatchNormalization(), keras.layers.ReLU()]
    layers.append(keras.layers.Dense(output_dim, dtype="float32"))
    return keras.Sequential(layers, name=name)


class UnitColumns(keras.constraints.Constraint):
    """c_k <- c_k / |c_k| for every column of a [D, K] kernel (SwAV normalises prototypes every step).

    Keras applies a variable's constraint right after each optimizer update, inside the compiled step.
    """

    def __call__(self, w):
        return ops.normalize(w, axis=0, epsilon=1e-12)


class Prototypes(keras.layers.Layer):
    """K prototype vectors c_k (a Linear layer without bias): z [N, D] -> scores z·c [N, K], float32.

    The kernel [D, K] is unit-norm per column from initialisation on (`UnitColumns` after every update).
    ``call(z, frozen=...)``: a true (traced bool) ``frozen`` stops the prototypes' gradient, which is how
    SwAV freezes them for its first iterations.
    """

    def __init__(self, num_prototypes, **kwargs):
        super().__init__(dtype="float32", **kwargs)
        if num_prototypes < 2:
            raise ValueError(f"need at least 2 prototypes, got {num_prototypes}.")
        self.num_prototypes = int(num_prototypes)

    def build(self, input_shape):
        self.kernel = self.add_weight(name="kernel", shape=(int(input_shape[-1]), self.num_prototypes),
                                      initializer="glorot_uniform", constraint=UnitColumns())
        self.kernel.assign(self.kernel.constraint(self.kernel.value))

    def call(self, z, frozen=False):
        kernel = self.kernel.value
        if frozen is not False:
            keep = ops.cast(frozen, "float32")   # gradient x (1 - keep): zero while frozen
            kernel = keep * ops.stop_gradient(kernel) + (1.0 - keep) * kernel
        return ops.matmul(ops.cast(z, "float32"), kernel)

    def get_config(self):
        return {**super().get_config(), "num_prototypes": self.num_prototypes}


# ============ model ============

class PrototypeUsage(keras.metrics.Metric):
    """Entropy (nats) of how often each prototype is a crop's best match; ln K when all are used."""

    def __init__(self, num_prototypes, name="usage_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_prototypes = num_prototypes
        self.counts = self.add_variable(name="counts", shape=(num_prototypes,), initializer="zeros")

    def update_state(self, best):
        """best: int array of prototype indices, any shape."""
        onehot = ops.one_hot(ops.reshape(best, (-1,)), self.num_prototypes)
        self.counts.assign(self.counts + ops.sum(onehot, axis=0))

    def reset_state(self):
        self.counts.assign(ops.zeros(self.counts.shape, dtype=self.counts.dtype))  # zeros_like(Variable) fails on Keras 3.15

    def result(self):
        p = self.counts / ops.maximum(ops.sum(self.counts), 1.0)
        return -ops.sum(ops.where(p > 0, p * ops.log(ops.maximum(p, 1e-30)), 0.0))


def _crops_of(data):
    """The crops list from a batch: a tuple of crops, ((crops...),) or {"crops": ...}."""
    if isinstance(data, dict):
        data = data["crops"]
    if isinstance(data, (tuple, list)) and len(data) == 1 and isinstance(data[0], (tuple, list)):
        data = data[0]
    return list(data) if isinstance(data, (tuple, list)) else [data]


def _resolution_groups(crops):
    """Runs of consecutive crops with one static size: [(start, stop), ...] (swav ``idx_crops``)."""
    groups, start = [], 0
    for i in range(1, len(crops) + 1):
        if i == len(crops) or tuple(crops[i].shape[1:]) != tuple(crops[start].shape[1:]):
            groups.append((start, i))
            start = i
    return groups


def multicrop_features(backbone, crops, training=False):
    """The backbone over V crops, one pass per run of equal-sized crops (swav ``idx_crops``).

    Args:
        backbone: images [N, H, W, 3] -> features [N, F]. crops: list of V [B, H_v, W_v, 3].
    Returns:
        features [V * B, F], crop-major (crop 0's B images first).
    """
    features = [backbone(ops.concatenate(crops[s:e], axis=0) if e - s > 1 else crops[s], training=training)
                for s, e in _resolution_groups(crops)]
    return ops.concatenate(features, axis=0) if len(features) > 1 else features[0]


class SwAVModel(keras.Model):
    """Backbone + projection head + prototypes, trained with the SwAV loss by ``fit()`` on multi-crops.

    The dataset yields batches of V crops of the same B images (a tuple, float [0, 1], big crops
    first). Each step: one backbone pass per crop resolution, Sinkhorn codes for ``crops_for_assign``
    (queue rows prepended once the queue is full), swapped prediction; prototypes get no gradient for
    the first ``freeze_prototypes_niters`` steps and are unit-norm after every update; from step
    ``queue_start_step`` on, the assigned crops' embeddings are pushed into the queue. Everything runs
    inside Keras's compiled train step (``compute_loss``), so on JAX it is one XLA program per step.

    State kept as non-trainable variables (saved with the model): ``step`` (steps trained), ``queue``.
    Logs: ``loss`` (collapse floor `ln_k` beside it), ``usage_entropy``.

    Args:
        backbone: Keras model, images [N, H, W, 3] -> features [N, F] (BN follows ``training``).
        num_prototypes: K (paper 3000; `kitlib.swav.recipe.rule` chooses it from the data). hidden_dim, output_dim: head.
        temperature, epsilon, sinkhorn_iters, crops_for_assign: as in `swav_loss`.
        freeze_prototypes_niters: steps with frozen prototypes (paper 313 at batch 4096).
        queue_length: queued embeddings per assigned crop, global (0: no queue; paper 3840 at batch 256).
        queue_start_step: first step that pushes into the queue (paper: epoch 15's first step).
        crop_augment: optional layer applied to the list of crops at the start of each training
            forward pass (`kitlib.swav.color.ColorAugment`: colour augmentation on the accelerator).
    """

    def __init__(self, backbone, num_prototypes=PAPER_NUM_PROTOTYPES, hidden_dim=2048, output_dim=128,
                 temperature=0.1, epsilon=0.05, sinkhorn_iters=3, crops_for_assign=(0, 1),
                 freeze_prototypes_niters=313, queue_length=0, queue_start_step=0, crop_augment=None, **kwargs):
        super().__init__(**kwargs)
        self.backbone, self.crop_augment = backbone, crop_augment
        self.head = projection_head(hidden_dim, output_dim)
        self.prototypes = Prototypes(num_prototypes, name="prototypes")
        features = backbone.output_shape[-1]
        self.head.build((None, features))
        self.prototypes.build((None, output_dim))
        self.num_prototypes, self.temperature, self.epsilon = num_prototypes, temperature, epsilon
        self.sinkhorn_iters, self.crops_for_assign = sinkhorn_iters, tuple(crops_for_assign)
        self.freeze_prototypes_niters, self.queue_start_step = int(freeze_prototypes_niters), int(queue_start_step)
        self.step = self.add_weight(name="step", shape=(), dtype="int32", initializer="zeros", trainable=False)
        self.queue = None
        if queue_length:
            self.queue = self.add_weight(name="queue", shape=(len(self.crops_for_assign), queue_length, output_dim),
                                         initializer="zeros", trainable=False, dtype="float32")
        self.usage = PrototypeUsage(num_prototypes)

    @property
    def ln_k(self):
        """The collapse floor: the loss when codes and predictions are uniform over K prototypes."""
        return math.log(self.num_prototypes)

    def call(self, crops, training=False):
        """Crops (a list of V [B, H_v, W_v, 3]) -> {"z": [V, B, D] float32 unit, "scores": [V, B, K]}."""
        crops = _crops_of(crops)
        if training and self.crop_augment is not None:
            crops = list(self.crop_augment(crops, training=True))
        h = self.head(multicrop_features(self.backbone, crops, training), training=training)
        z = ops.normalize(ops.cast(h, "float32"), axis=1, epsilon=1e-12)
        frozen = (self.step < self.freeze_prototypes_niters) if training else False
        scores = self.prototypes(z, frozen=frozen)
        batch = crops[0].shape[0]
        return {"z": ops.reshape(z, (len(crops), batch, -1)),
                "scores": ops.reshape(scores, (len(crops), batch, self.num_prototypes))}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The swapped-prediction loss of the batch; in training also advances `step` and the queue."""
        z, scores = y_pred["z"], y_pred["scores"]
        assigned = list(self.crops_for_assign)
        queue_scores = queue_full = None
        if self.queue is not None:
            queue = self.queue.value                                                  # [A, L, D]
            queue_scores = ops.matmul(queue, ops.stop_gradient(self.prototypes.kernel.value))  # [A, L, K]
            queue_full = ops.any(ops.not_equal(queue[:, -1], 0.0))                     # swav: use once filled
        loss = swav_loss(scores, self.crops_for_assign, self.temperature, self.epsilon, self.sinkhorn_iters,
                         queue_scores, queue_full)
        if training:
            if self.queue is not None:
                newest = ops.stop_gradient(ops.take(z, assigned, axis=0))            # [A, B, D]
                length, batch = self.queue.shape[1], z.shape[1]
                if batch > length:
                    raise ValueError(f"queue_length {length} is shorter than the global batch {batch}.")
                pushed = ops.concatenate([newest, queue[:, : length - batch]], axis=1)
                self.queue.assign(ops.where(self.step >= self.queue_start_step, pushed, queue))
            self.step.assign(self.step + 1)
        if self.losses:
            loss = loss + ops.sum(ops.stack([ops.cast(l, "float32") for l in self.losses]))
        return loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        best = ops.argmax(ops.take(y_pred["scores"], list(self.crops_for_assign), axis=0), axis=-1)   # [A, B]
        self.usage.update_state(best)
        return self.get_metrics_result()


def prototype_usage(model, batches, steps=10):
    """Share of assigned crops whose best prototype is k, over `steps` batches: [K] float, sums to 1.

    Args:
        model: a `SwAVModel`. batches: a tf.data.Dataset of multi-crop batches (as for fit).
        steps: batches to read.
    """
    best = []
    for batch in batches.take(steps):
        scores = model(_crops_of(batch), training=False)["scores"]                         # [V, B, K]
        best.append(np.asarray(ops.argmax(ops.take(scores, list(model.crops_for_assign), axis=0), axis=-1)))
    best = np.concatenate([b.reshape(-1) for b in best])
    return np.bincount(best, minlength=model.num_prototypes) / max(1, best.size)
