"""Images/s of a SwAV train step next to a plain supervised step, Keras 3 on JAX: same backbone, crops, optimiser.

    python bench/train_step.py                                  # ResNet-50, 2x224 + 6x96, batch 8
    python bench/train_step.py --backbone small_cnn --crops 2x64@0.14-1,2x32@0.05-0.14 --batch 32

The supervised step is what any multi-crop training pays anyway: the backbone over every crop
(grouped by resolution, as SwAV does), a linear classifier and cross-entropy. SwAV adds the
projection head, the prototypes, Sinkhorn and the swapped-prediction loss (and the queue, with
--queue); the goal is that this costs at most 1.10x the supervised step. Both run through Keras's
compiled ``fit`` step on JAX, on whatever `kitlib.runtime.setup` finds (with `DataParallel` when there
are several devices). Inputs are synthetic arrays held in memory, so the figures measure the step, not
the input pipeline (bench/pipeline.py measures that). Rounds alternate the two models; the best round
of each is the headline (other processes only ever slow a round down) and the median is printed
beside it, with the process's CPU seconds per image (steadier than the wall clock on a shared box).
"""

import argparse
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from kitlib import runtime  # noqa: E402
from kitlib.compat import keras, tf  # noqa: E402
from kitlib.models import backbones
from kitlib.swav import geometry, optim
from kitlib.swav.model import SwAVModel, multicrop_features

ops = keras.ops


class SupervisedMultiCrop(keras.Model):
    """Backbone over all crops (one pass per resolution) -> Dense(classes) -> cross-entropy on every crop."""

    def __init__(self, backbone, num_classes=5):
        super().__init__()
        self.backbone = backbone
        self.classifier = keras.layers.Dense(num_classes, dtype="float32")

    def call(self, crops, training=False):
        return self.classifier(multicrop_features(self.backbone, list(crops), training))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        targets = ops.tile(y, [y_pred.shape[0] // y.shape[0]])
        return ops.mean(keras.losses.sparse_categorical_crossentropy(targets, y_pred, from_logits=True))


def synthetic_batches(config, batch, num_classes=5, seed=0):
    """Endless in-memory batches: ((crops,),) for SwAV and (crops, labels) for the supervised model."""
    rng = np.random.default_rng(seed)
    crops = tuple(rng.random((batch, s, s, 3), np.float32) for s in config.crop_sizes)
    labels = rng.integers(0, num_classes, batch).astype(np.int32)
    return (tf.data.Dataset.from_tensors((crops,)).repeat(),
            tf.data.Dataset.from_tensors((crops, labels)).repeat())


def images_per_second(model, batches, batch, steps):
    """(images per wall-clock second, images per CPU second of this process) over `steps` steps."""
    wall, cpu = time.perf_counter(), time.process_time()
    model.fit(batches, epochs=1, steps_per_epoch=steps, verbose=0)
    return batch * steps / (time.perf_counter() - wall), batch * steps / (time.process_time() - cpu)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50", choices=list(backbones.KIT_NAMES))
    parser.add_argument("--crops", default="2x224@0.14-1,6x96@0.05-0.14")
    parser.add_argument("--batch", type=int, default=8, help="source images per step (global)")
    parser.add_argument("--prototypes", type=int, default=3000)
    parser.add_argument("--queue", type=int, default=0, help="queue length (0: none)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds; best and median reported")
    parser.add_argument("--allow-cpu", action="store_true")
    args = parser.parse_args(argv)

    rt = runtime.setup(allow_cpu=args.allow_cpu)
    rt.per_device_batch(args.batch)
    config = geometry.parse_multicrop_spec(args.crops)
    swav_batches, supervised_batches = synthetic_batches(config, args.batch)
    keras.utils.set_random_seed(0)
    swav_model = SwAVModel(backbones.build(args.backbone), num_prototypes=args.prototypes,
                                freeze_prototypes_niters=0, queue_length=args.queue)
    swav_model.compile(optimizer=optim.build_optimizer("lars", 0.1))
    supervised = SupervisedMultiCrop(backbones.build(args.backbone))
    supervised.compile(optimizer=optim.build_optimizer("lars", 0.1))
    for model, batches in ((swav_model, swav_batches), (supervised, supervised_batches)):
        model.fit(batches, epochs=1, steps_per_epoch=2, verbose=0)  # compile and warm up

    rates = {"swav": [], "supervised": []}
    for _ in range(args.rounds):
        rates["supervised"].append(images_per_second(supervised, supervised_batches, args.batch, args.steps))
        rates["swav"].append(images_per_second(swav_model, swav_batches, args.batch, args.steps))
    host = f"{runtime.usable_cores()} CPU cores ({platform.processor() or platform.machine()})"
    print(f"device: {rt.describe()}, {rt.devices[0].device_kind}; host {host}; Keras {keras.__version__}")
    print(f"backbone {args.backbone}, crops {config.spec}, batch {args.batch} images, K {args.prototypes}, "
          f"queue {args.queue}, {args.rounds} rounds x {args.steps} steps")
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
