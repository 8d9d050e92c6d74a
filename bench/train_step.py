"""Images/s of a SwAV train step next to a plain supervised step: same backbone, crops and optimiser.

    python bench/train_step.py                                  # ResNet-50, 2x224 + 6x96, batch 8
    python bench/train_step.py --backbone small_cnn --crops 2x64@0.14-1,2x32@0.05-0.14 --batch 32

The supervised step is what any multi-crop training pays anyway: the backbone over every crop
(grouped by resolution, as SwAV does), a linear classifier and cross-entropy. SwAV adds the
projection head, the prototypes, Sinkhorn and the swapped-prediction loss; the goal is that this
costs at most 1.10x the supervised step. Inputs are synthetic tensors held in memory, so the figures
measure the step, not the input pipeline (bench/pipeline.py measures that). Rounds alternate the two
models; the best round of each is the headline (other processes only ever slow a round down) and the
median is printed beside it. The process's CPU seconds per image are reported too: on a shared
machine they measure the cost of a step far more steadily than the wall clock.
"""

import argparse
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kitlib import augment, optim, pretrain, swav  # noqa: E402
from kitlib.compat import keras  # noqa: E402


class SupervisedMultiCrop(keras.Model):
    """Backbone over all crops (one pass per resolution) -> Dense(classes) -> cross-entropy."""

    def __init__(self, backbone, num_classes=5):
        super().__init__()
        self.backbone = backbone
        self.classifier = keras.layers.Dense(num_classes)

    def call(self, crops, training=False):
        features = [self.backbone(tf.concat(crops[s:e], 0), training=training)
                    for s, e in swav._resolution_groups(list(crops))]
        return self.classifier(tf.concat(features, 0))

    def train_step(self, data):
        crops, labels = data
        with tf.GradientTape() as tape:
            logits = self(list(crops), training=True)
            targets = tf.tile(labels, [len(crops)])
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(targets, logits, from_logits=True))
        self.optimizer.minimize(loss, self.trainable_variables, tape=tape)
        return {"loss": loss}


def synthetic_batches(config, batch, num_classes=5, seed=0):
    rng = np.random.default_rng(seed)
    crops = tuple(tf.constant(rng.random((batch, s, s, 3), np.float32)) for s in config.crop_sizes)
    labels = tf.constant(rng.integers(0, num_classes, batch), tf.int32)
    return (tf.data.Dataset.from_tensors(crops).repeat(),
            tf.data.Dataset.from_tensors((crops, labels)).repeat())


def images_per_second(model, batches, batch, steps):
    """(images per wall-clock second, images per CPU second of this process) over `steps` steps."""
    wall, cpu = time.perf_counter(), time.process_time()
    model.fit(batches, epochs=1, steps_per_epoch=steps, verbose=0)
    return batch * steps / (time.perf_counter() - wall), batch * steps / (time.process_time() - cpu)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50", choices=["resnet50", "small_cnn"])
    parser.add_argument("--crops", default="2x224@0.14-1,6x96@0.05-0.14")
    parser.add_argument("--batch", type=int, default=8, help="source images per step")
    parser.add_argument("--prototypes", type=int, default=3000)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds; best and median reported")
    args = parser.parse_args(argv)

    config = augment.parse_multicrop_spec(args.crops)
    swav_batches, supervised_batches = synthetic_batches(config, args.batch)
    keras.utils.set_random_seed(0)
    swav_model = swav.SwAVModel(pretrain.build_backbone(args.backbone), num_prototypes=args.prototypes,
                                freeze_prototypes_niters=0)
    swav_model.compile(optimizer=optim.build_optimizer("lars", 0.1))
    supervised = SupervisedMultiCrop(pretrain.build_backbone(args.backbone))
    supervised.compile(optimizer=optim.build_optimizer("lars", 0.1))
    for model, batches in ((swav_model, swav_batches), (supervised, supervised_batches)):
        model.fit(batches, epochs=1, steps_per_epoch=2, verbose=0)  # trace and warm up

    rates = {"swav": [], "supervised": []}
    for _ in range(args.rounds):
        rates["supervised"].append(images_per_second(supervised, supervised_batches, args.batch, args.steps))
        rates["swav"].append(images_per_second(swav_model, swav_batches, args.batch, args.steps))
    gpus = tf.config.list_physical_devices("GPU")
    device = (tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU") if gpus
              else f"CPU, {os.cpu_count()} cores ({platform.processor() or platform.machine()})")
    print(f"device: {device}; TF {tf.__version__}")
    print(f"backbone {args.backbone}, crops {config.spec}, batch {args.batch} images, K {args.prototypes}, "
          f"{args.rounds} rounds x {args.steps} steps")
    summary = {}
    for name in ("supervised", "swav"):
        wall = [w for w, _ in rates[name]]
        cpu = statistics.median(c for _, c in rates[name])
        summary[name] = (max(wall), statistics.median(wall), cpu)
        print(f"{name + ' step:':17s}{max(wall):9.2f} images/s best, {statistics.median(wall):.2f} median, "
              f"{cpu:.2f} images per CPU-second   (rounds: {', '.join(f'{w:.2f}' for w in wall)})")
    (sup_best, sup_med, sup_cpu), (sw_best, sw_med, sw_cpu) = summary["supervised"], summary["swav"]
    print(f"SwAV cost / supervised cost: {sup_cpu / sw_cpu:.3f}x in CPU time; wall clock {sup_best / sw_best:.3f}x "
          f"best, {sup_med / sw_med:.3f}x median (goal <= 1.10x)")


if __name__ == "__main__":
    main()
