"""SwAV: online clustering with swapped assignment prediction (Caron et al. 2020, arXiv 2006.09882).

Follows facebookresearch/swav ``main_swav.py``: a backbone and projection head embed every crop of
an image (z, unit norm); prototype scores z·c are turned into codes q by Sinkhorn-Knopp on the
crops in ``crops_for_assign``, and every other crop must predict those codes (swapped prediction).

One code path for TPU, GPU and CPU: `sinkhorn` and `swav_loss` all-reduce what must be global when
called in a replica context with several replicas and are exact on one; `SwAVModel.train_step` runs
under any `tf.distribute` strategy through ``fit()``. Numerics (Sinkhorn, loss) are float32 under
any mixed-precision policy.
"""

import math

import numpy as np

from kitlib.compat import keras, tf

PAPER_NUM_PROTOTYPES = 3000   # K on ImageNet (1000 classes, 1.28 M images)
_PROTOTYPES_PER_CLASS = 10    # community guidance for small data: K ≈ 10 x the number of classes
_SCORE_LIMIT = 1e4            # |z·c| <= 1 for unit vectors; the clip only keeps scores/ε finite otherwise
_SUM = tf.distribute.ReduceOp.SUM


def suggest_num_prototypes(num_classes=None):
    """Number of prototypes K: the paper's 3000, or 10 x the classes when they are few.

    SwAV is robust to K within an order of magnitude of the class count (paper, Table 9), but on a
    small dataset thousands of prototypes leave each one a handful of images. Keep the global batch
    (plus queue) comfortably above K, or the equal-partition constraint spreads every image thin.

    Args:
        num_classes: int or None, classes expected in the data (Cassava: 5 -> 50).
    Returns:
        int K.
    """
    if num_classes is None:
        return PAPER_NUM_PROTOTYPES
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
    return min(PAPER_NUM_PROTOTYPES, _PROTOTYPES_PER_CLASS * num_classes)


# ============ distributed helpers (identity on one replica) ============

def _replica_ctx():
    ctx = tf.distribute.get_replica_context()  # None in a cross-replica context
    return ctx if ctx is not None and ctx.num_replicas_in_sync > 1 else None


def _sum_replicas(x, ctx):
    return ctx.all_reduce(_SUM, x) if ctx is not None else x


def _max_replicas(x, ctx):
    return tf.reduce_max(ctx.all_gather(x[None], axis=0), axis=0) if ctx is not None else x


def _logsumexp_over_samples(log_q, ctx):
    """log Σ_b exp(log_q[b, k]) over the samples of every replica: [B, K] -> [K], max-shifted."""
    shift = _max_replicas(tf.reduce_max(log_q, axis=0), ctx)
    shift = tf.where(tf.math.is_finite(shift), shift, tf.zeros_like(shift))
    return shift + tf.math.log(_sum_replicas(tf.reduce_sum(tf.exp(log_q - shift), axis=0), ctx))


# ============ Sinkhorn-Knopp ============

def sinkhorn(scores, epsilon=0.05, n_iters=3, valid=None):
    """Equal-partition codes Q from prototype scores (swav ``distributed_sinkhorn``), in log domain.

    Official algorithm on Q = exp(scores / ε)ᵀ (K-by-B): repeat n_iters times {rows /= row sums, /= K;
    columns /= column sums, /= B}, then Q *= B. Here log Q is kept and each normalisation is a
    logsumexp subtraction, so nothing under- or overflows even at ε = 0.01 (scores/ε in [-100, 100]).
    In a replica context with several replicas the row sums run over all replicas' samples and B is
    global, so N replicas return exactly what one device returns on the concatenated batch.

    Args:
        scores: [B, K] float (any dtype, cast to float32), z·c cosine scores in [-1, 1]; no gradient.
        epsilon: ε > 0, entropy regularisation (paper 0.05; lower is sharper).
        n_iters: Sinkhorn iterations >= 1 (paper 3).
        valid: optional [B] bool; False rows (e.g. an unfilled queue) count for nothing.
    Returns:
        codes: [B, K] float32 >= 0, each valid row summing to 1.
    """
    if epsilon <= 0 or n_iters < 1:
        raise ValueError(f"sinkhorn needs epsilon > 0 and n_iters >= 1, got {epsilon} and {n_iters}.")
    scores = tf.convert_to_tensor(scores)
    if scores.shape.rank != 2:
        raise ValueError(f"scores must be [batch, prototypes], got shape {scores.shape}.")
    ctx = _replica_ctx()
    scores = tf.clip_by_value(tf.cast(tf.stop_gradient(scores), tf.float32), -_SCORE_LIMIT, _SCORE_LIMIT)
    log_q = scores / epsilon                       # log Qᵀ, kept B-by-K: row b = sample, column k = prototype
    if valid is None:
        count, row_mask = tf.cast(tf.shape(log_q)[0], tf.float32), 0.0
    else:
        count = tf.reduce_sum(tf.cast(valid, tf.float32))
        row_mask = tf.where(valid, 0.0, -math.inf)[:, None]   # log 0 for ignored samples
    log_b = tf.math.log(_sum_replicas(count, ctx))  # B: samples over all replicas
    log_k = math.log(scores.shape[-1]) if scores.shape[-1] else tf.math.log(tf.cast(tf.shape(log_q)[1], tf.float32))
    # Q /= ΣQ is skipped: a constant factor, cancelled exactly by the first prototype normalisation.
    for _ in range(n_iters):
        # normalise each prototype: its total weight over all samples must be 1/K
        log_q -= _logsumexp_over_samples(log_q + row_mask, ctx) + log_k
        # normalise each sample: its total weight must be 1/B
        log_q -= tf.reduce_logsumexp(log_q, axis=1, keepdims=True) + log_b
    return tf.exp(log_q + log_b)                     # Q *= B: each sample's code sums to 1


# ============ swav loss ============

def swav_loss(scores, crops_for_assign=(0, 1), temperature=0.1, epsilon=0.05, sinkhorn_iters=3,
              queue_scores=None, queue_valid=None):
    """Swapped-prediction loss (swav ``main_swav.py``, ``train``), scaled for the global batch.

    For each crop a in crops_for_assign: q = sinkhorn(scores[a]) (no gradient, queue rows prepended
    when given), and every other crop v pays -Σ_k q_k log softmax(scores[v] / τ)_k; averaged over the
    V - 1 predicting crops, then over the assigned crops and the images of the global batch.

    Args:
        scores: [V, B, K] (or a list of V [B, K]) prototype scores of the V crops of B images.
        crops_for_assign: indices of the crops whose codes are targets (paper (0, 1): the big crops).
        temperature: τ of the softmax (paper 0.1). epsilon, sinkhorn_iters: as in `sinkhorn`.
        queue_scores: optional [len(crops_for_assign), L, K] scores of queued embeddings.
        queue_valid: optional bool, scalar or [L]: which queue rows to use (False before it is full).
    Returns:
        scalar float32: Σ over this replica's images / global batch, so the sum over replicas (what
        the optimiser's gradient all-reduce computes) equals the global mean.
    """
    scores = [tf.cast(s, tf.float32) for s in (tf.unstack(scores) if isinstance(scores, tf.Tensor) else scores)]
    n_crops = len(scores)
    if n_crops < 2 or not crops_for_assign or any(not 0 <= a < n_crops for a in crops_for_assign):
        raise ValueError(f"swav_loss needs >= 2 crops and crops_for_assign within range(n_crops); got "
                         f"{n_crops} crops and crops_for_assign={tuple(crops_for_assign)}.")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    batch = tf.shape(scores[0])[0]
    log_p = [tf.nn.log_softmax(s / temperature, axis=1) for s in scores]
    per_image = 0.0
    for i, a in enumerate(crops_for_assign):
        assign_scores, valid = scores[a], None
        if queue_scores is not None:
            queued = tf.cast(queue_scores[i], tf.float32)
            queue_rows = tf.broadcast_to(tf.cast(queue_valid, tf.bool), tf.shape(queued)[:1])
            assign_scores = tf.concat([queued, assign_scores], axis=0)
            valid = tf.concat([queue_rows, tf.ones([batch], tf.bool)], axis=0)
        q = tf.stop_gradient(sinkhorn(assign_scores, epsilon, sinkhorn_iters, valid)[-batch:])
        sub = tf.add_n([-tf.reduce_sum(q * log_p[v], axis=1) for v in range(n_crops) if v != a])
        per_image += sub / (n_crops - 1)
    per_image /= len(crops_for_assign)
    # divide by the global batch, not the replica's: gradients are summed over replicas
    return tf.nn.compute_average_loss(per_image)


# ============ projection head, prototypes, queue ============

def projection_head(hidden_dim=2048, output_dim=128, name="projection_head"):
    """Linear(hidden) -> BN -> ReLU -> Linear(output) (swav ``resnet50.py``); hidden_dim 0: one Linear.

    The last layer runs in float32 so the L2-normalised embedding is float32 under mixed precision.
    """
    layers = []
    if hidden_dim:
        layers += [keras.layers.Dense(hidden_dim), keras.layers.BatchNormalization(), keras.layers.ReLU()]
    layers.append(keras.layers.Dense(output_dim, dtype="float32"))
    return keras.Sequential(layers, name=name)


class Prototypes(keras.layers.Layer):
    """K prototype vectors c_k (a Linear layer without bias): z [N, D] -> scores z·c [N, K], float32.

    Call `normalize()` before every step so each c_k is unit norm (swav normalises every iteration).
    """

    def __init__(self, num_prototypes, **kwargs):
        super().__init__(dtype="float32", **kwargs)
        if num_prototypes < 2:
            raise ValueError(f"need at least 2 prototypes, got {num_prototypes}.")
        self.num_prototypes = int(num_prototypes)

    def build(self, input_shape):
        # ONLY_FIRST_REPLICA: every replica computes the same normalised value, so assigning it
        # inside a replica context (train_step) is allowed and well defined.
        self.kernel = self.add_weight(
            name="kernel", shape=[int(input_shape[-1]), self.num_prototypes], initializer="glorot_uniform",
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        super().build(input_shape)

    def normalize(self):
        """c_k <- c_k / |c_k| for every prototype (columns of the kernel)."""
        return self.kernel.assign(tf.math.l2_normalize(self.kernel, axis=0))

    def call(self, z):
        return tf.matmul(tf.cast(z, tf.float32), self.kernel)


def queue_block(queue):
    """This replica's part of the queue: [A, L, D] -> [A, L / R, D] (R replicas, row-blocks in order)."""
    ctx = _replica_ctx()
    if ctx is None:
        return queue
    n = ctx.num_replicas_in_sync
    a, length, d = queue.shape
    if length % n:
        raise ValueError(f"queue_length {length} must be a multiple of the {n} replicas.")
    blocks = tf.reshape(queue, [a, n, length // n, d])
    return tf.gather(blocks, ctx.replica_id_in_sync_group, axis=1)


def queue_push(queue, embeddings):
    """Every replica's newest embeddings pushed at the front of its block (swav queue update).

    Args:
        queue: [A, L, D] the whole queue (all replicas' blocks). embeddings: [A, B, D], this replica's.
    Returns:
        [A, L, D] new queue, identical on every replica (embeddings are all-gathered).
    """
    ctx = _replica_ctx()
    n = 1 if ctx is None else ctx.num_replicas_in_sync
    a, length, d = queue.shape
    batch = embeddings.shape[1]
    if batch is None or length // n < batch:
        raise ValueError(f"queue_length {length} over {n} replica(s) is shorter than the per-replica "
                         f"batch {batch}; use a queue of at least batch x replicas rows.")
    emb = tf.cast(embeddings, queue.dtype)
    if ctx is not None:
        emb = ctx.all_gather(emb[:, None], axis=1)        # [A, R, B, D]
    else:
        emb = emb[:, None]
    blocks = tf.reshape(queue, [a, n, length // n, d])
    return tf.reshape(tf.concat([emb, blocks[:, :, : length // n - batch]], axis=2), [a, length, d])


# ============ model ============

class PrototypeUsage(keras.metrics.Metric):
    """Entropy (nats) of how often each prototype is a crop's best match; ln K when all are used."""

    def __init__(self, num_prototypes, name="usage_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.counts = self.add_weight(name="counts", shape=[num_prototypes], initializer="zeros")

    def update_state(self, counts):
        self.counts.assign_add(tf.cast(counts, self.counts.dtype))

    def reset_state(self):
        self.counts.assign(tf.zeros_like(self.counts))

    def result(self):
        p = self.counts / tf.maximum(tf.reduce_sum(self.counts), 1.0)
        return -tf.reduce_sum(tf.math.multiply_no_nan(tf.math.log(p), p))


def _crops_of(data):
    """The crops tuple from a dataset element: crops, (crops, labels) or {"crops": ...}."""
    if isinstance(data, dict):
        data = data["crops"]
    if isinstance(data, (tuple, list)) and data and isinstance(data[0], (tuple, list)):
        data = data[0]
    return list(data) if isinstance(data, (tuple, list)) else [data]


def _resolution_groups(crops):
    """Runs of consecutive crops with one static size: [(start, stop), ...] (swav ``idx_crops``)."""
    groups, start = [], 0
    for i in range(1, len(crops) + 1):
        same = (i < len(crops) and crops[i].shape[1:].is_fully_defined()
                and crops[i].shape[1:] == crops[start].shape[1:])
        if not same:
            groups.append((start, i))
            start = i
    return groups


class SwAVModel(keras.Model):
    """Backbone + projection head + prototypes trained with the SwAV loss by ``fit()`` on multi-crops.

    The dataset yields tuples of V crops of the same B images (float [0, 1], big crops first).
    Each step: normalise prototypes, one backbone pass per crop resolution, Sinkhorn codes for
    ``crops_for_assign``, swapped prediction; prototype gradients are zero for the first
    ``freeze_prototypes_niters`` steps; the queue (if ``queue_length``) fills from
    ``queue_start_epoch`` on. Logs: ``loss`` (collapse floor ``ln_k`` beside it), ``usage_entropy``.

    Args:
        backbone: Keras model, images [N, H, W, 3] -> features [N, F] (BN follows ``training``).
        num_prototypes: K (paper 3000; see `suggest_num_prototypes`). hidden_dim, output_dim: head.
        temperature, epsilon, sinkhorn_iters, crops_for_assign: as in `swav_loss`.
        freeze_prototypes_niters: steps with frozen prototypes (paper 313 at batch 4096).
        queue_length: total queued embeddings over all replicas (0: no queue; paper 3840 at batch 256).
        queue_start_epoch: first epoch that pushes into the queue (paper 15).
        crop_augment: optional layer applied to the list of crops at the start of each train step
            (e.g. `kitlib.augment.ColorAugment` to run colour augmentation on the accelerator).
    """

    def __init__(self, backbone, num_prototypes=PAPER_NUM_PROTOTYPES, hidden_dim=2048, output_dim=128,
                 temperature=0.1, epsilon=0.05, sinkhorn_iters=3, crops_for_assign=(0, 1),
                 freeze_prototypes_niters=313, queue_length=0, queue_start_epoch=15, crop_augment=None, **kwargs):
        super().__init__(**kwargs)
        self.backbone, self.crop_augment = backbone, crop_augment
        self.head = projection_head(hidden_dim, output_dim)
        self.prototypes = Prototypes(num_prototypes, name="prototypes")
        if backbone.built and backbone.output_shape[-1] is not None:
            self.head.build([None, backbone.output_shape[-1]])  # every variable exists before a restore
        self.prototypes.build([None, output_dim])
        self.num_prototypes, self.temperature, self.epsilon = num_prototypes, temperature, epsilon
        self.sinkhorn_iters, self.crops_for_assign = sinkhorn_iters, tuple(crops_for_assign)
        self.freeze_prototypes_niters, self.queue_start_epoch = freeze_prototypes_niters, queue_start_epoch
        replicated = dict(trainable=False, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.epoch = self.add_weight(name="epoch", shape=[], dtype=tf.int64, initializer="zeros", **replicated)
        self.queue = None
        if queue_length:
            self.queue = self.add_weight(name="queue", shape=[len(self.crops_for_assign), queue_length, output_dim],
                                         initializer="zeros", **replicated)
        self.distribute_reduction_method = "first"  # logged values are all-reduced already
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.usage = PrototypeUsage(num_prototypes)

    @property
    def metrics(self):
        return [self.loss_tracker, self.usage]

    @property
    def ln_k(self):
        """The collapse floor: the loss when codes and predictions are uniform over K prototypes."""
        return math.log(self.num_prototypes)

    def call(self, crops, training=False):
        """Crops (a tensor or a list of V [B, H_v, W_v, 3]) -> (z [V, B, D] float32 unit, scores [V, B, K])."""
        crops = _crops_of(crops)
        features = [self.backbone(tf.concat(crops[s:e], axis=0), training=training)
                    for s, e in _resolution_groups(crops)]
        z = self.head(tf.concat(features, axis=0) if len(features) > 1 else features[0], training=training)
        z = tf.math.l2_normalize(tf.cast(z, tf.float32), axis=1)
        scores = self.prototypes(z)
        batch = tf.shape(crops[0])[0]
        return (tf.reshape(z, [len(crops), batch, -1]),
                tf.reshape(scores, [len(crops), batch, self.num_prototypes]))

    def _queue_inputs(self):
        block = queue_block(self.queue)                                   # [A, L/R, D]
        scores = tf.matmul(block, self.prototypes.kernel)                 # [A, L/R, K]
        full = tf.reduce_any(tf.not_equal(block[:, -1], 0.0))             # swav: use once filled
        return scores, full

    def train_step(self, data):
        crops = _crops_of(data)
        if self.crop_augment is not None:
            crops = list(self.crop_augment(crops, training=True))
        self.prototypes.normalize()
        ctx = tf.distribute.get_replica_context()
        replicas = ctx.num_replicas_in_sync if ctx is not None else 1
        with tf.GradientTape() as tape:
            z, scores = self(crops, training=True)
            queue_scores, queue_full = self._queue_inputs() if self.queue is not None else (None, None)
            loss = swav_loss(scores, self.crops_for_assign, self.temperature, self.epsilon,
                             self.sinkhorn_iters, queue_scores, queue_full)
            total = loss + (tf.add_n(self.losses) / replicas if self.losses else 0.0)
            scaled = self.optimizer.get_scaled_loss(total) if hasattr(self.optimizer, "get_scaled_loss") else total
        variables = self.trainable_variables
        grads = tape.gradient(scaled, variables)
        if hasattr(self.optimizer, "get_unscaled_gradients"):
            grads = self.optimizer.get_unscaled_gradients(grads)
        frozen = self.optimizer.iterations < self.freeze_prototypes_niters
        grads = [tf.where(frozen, tf.zeros_like(g), g) if v is self.prototypes.kernel and g is not None else g
                 for g, v in zip(grads, variables)]
        self.optimizer.apply_gradients(zip(grads, variables))
        if self.queue is not None:
            pushed = queue_push(self.queue, tf.gather(z, list(self.crops_for_assign)))
            self.queue.assign(tf.where(self.epoch >= self.queue_start_epoch, pushed, self.queue))
        # metrics over the global batch, identical on every replica
        self.loss_tracker.update_state(_sum_replicas(loss, _replica_ctx()))
        best = tf.argmax(tf.gather(scores, list(self.crops_for_assign)), axis=-1)      # [A, B]
        counts = tf.reduce_sum(tf.one_hot(tf.reshape(best, [-1]), self.num_prototypes), axis=0)  # XLA-friendly
        self.usage.update_state(_sum_replicas(counts, _replica_ctx()))
        return {"loss": self.loss_tracker.result(), "ln_k": tf.constant(self.ln_k, tf.float32),
                "usage_entropy": self.usage.result(),
                "lr": tf.cast(self.optimizer.learning_rate, tf.float32)}

    def predict_step(self, data):
        """Best prototype of each assigned crop: [B, len(crops_for_assign)] int (for usage plots)."""
        _, scores = self(_crops_of(data), training=False)
        return tf.transpose(tf.argmax(tf.gather(scores, list(self.crops_for_assign)), axis=-1))

    def fit(self, *args, callbacks=None, **kwargs):
        """keras ``fit``, plus a callback that keeps ``self.epoch`` current (it gates the queue)."""
        return super().fit(*args, callbacks=list(callbacks or []) + [_EpochTracker()], **kwargs)


def prototype_usage(model, batches, steps=10):
    """Share of assigned crops whose best prototype is k, over `steps` batches: [K] float, sums to 1.

    Args:
        model: a `SwAVModel`. batches: multi-crop batches (as for fit). steps: batches to read.
    """
    best = np.asarray(model.predict(batches, steps=steps, verbose=0)).reshape(-1)
    return np.bincount(best, minlength=model.num_prototypes) / max(1, best.size)


class _EpochTracker(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.model.epoch.assign(epoch)
