"""The whole kit in one command: SwAV pretraining -> BiT-HyperRule fine-tuning -> TTA submission.

``python -m kitlib demo --data data/sample --out runs/demo`` runs, on the bundled sample and two CPU
cores in about a minute, the same functions the notebooks and the other commands call, all on Keras 3
(JAX) with TensorFlow reading the data:

    1. ``kitlib.swav.pretrain.pretrain``   a small backbone learns from multi-crops of unlabelled images and
                                      is exported as ``pretrain/backbone.keras``
    2. ``kitlib.bit.finetune.finetune``   that backbone + a zero head, fine-tuned with the BiT-HyperRule
                                      (steps shortened for the demo), saved as ``finetune/classifier.keras``
    3. ``kitlib.bit.submission.predict_and_write``   test images -> TTA -> validated submission.csv

and writes the pictures that tell whether each step worked: the SwAV loss against ln K, the
fine-tuning schedule, the confusion matrix. The settings are the CPU smoke presets
(``PretrainConfig.smoke``, ``FinetuneConfig.smoke``, each departure from the papers explained there);
on real data and an accelerator use the three commands with their real settings.
"""

import json
import os
import time

DEMO_PRETRAIN_EPOCHS = 40
DEMO_FINETUNE_STEPS = 60
DEMO_TTA = "flip"


def _save(figure, path):
    figure.savefig(path, dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return path


def run_demo(data_dir, out_dir, pretrain_epochs=DEMO_PRETRAIN_EPOCHS, finetune_steps=DEMO_FINETUNE_STEPS,
             seed=0, verbose=1, allow_cpu=False, rt=None):
    """Pretrain, fine-tune and predict on ``data_dir`` (competition layout); returns a summary dict.

    Everything goes under ``out_dir``: ``pretrain/`` (config.json, checkpoints, history.csv,
    backbone.keras), ``finetune/`` (classifier.keras + classifier.json, config.json, finetune.json,
    history.csv), ``submission.csv``, the plots ``*.png`` and ``summary.json``.

    Args:
        rt: a ``runtime.setup()`` result; None: set up here (``allow_cpu`` as in ``runtime.setup``).
    """
    from kitlib import runtime, viz  # noqa: PLC0415
    from kitlib.bit import finetune, submission  # noqa: PLC0415
    from kitlib.swav import pretrain  # noqa: PLC0415

    os.makedirs(out_dir, exist_ok=True)
    start = time.perf_counter()
    say = print if verbose else (lambda *a, **k: None)
    rt = rt or runtime.setup(allow_cpu=allow_cpu, verbose=bool(verbose))

    say("== 1/3 SwAV pretraining ==")
    swav = pretrain.pretrain(pretrain.PretrainConfig.smoke(
        data_dir=data_dir, out_dir=os.path.join(out_dir, "pretrain"), epochs=pretrain_epochs, seed=seed,
        verbose=2 if verbose else 0), rt)
    plots = {"swav_loss": _save(viz.plot_swav_history(swav.history, swav.ln_k),
                                os.path.join(out_dir, "swav_loss.png"))}

    say("== 2/3 BiT-HyperRule fine-tuning of the SwAV backbone ==")
    tuned = finetune.finetune(finetune.FinetuneConfig.smoke(
        data_dir, swav.backbone_path, os.path.join(out_dir, "finetune"), steps=finetune_steps, seed=seed,
        verbose=2 if verbose else 0), rt)
    plots["schedule"] = _save(viz.plot_bit_schedules([tuned.rule]), os.path.join(out_dir, "schedule.png"))
    if tuned.evaluation is not None:
        plots["confusion_matrix"] = _save(
            viz.plot_confusion_matrix(tuned.evaluation["confusion_matrix"], tuned.source.class_names),
            os.path.join(out_dir, "confusion_matrix.png"))

    say("== 3/3 prediction with TTA -> submission.csv ==")
    prediction = submission.predict_and_write(
        tuned.out_dir, data_dir, os.path.join(out_dir, "submission.csv"), tta=DEMO_TTA, verbose=verbose)

    summary = {
        "devices": rt.num_devices,
        "device_kind": rt.kind,
        "swav_final_loss": swav.history[-1]["loss"] if swav.history else None,
        "ln_k": swav.ln_k,
        "swav_collapsed": swav.collapsed,
        "backbone": swav.backbone_path,
        "finetune_val_accuracy": tuned.evaluation["accuracy"] if tuned.evaluation else None,
        "classifier": tuned.out_dir,
        "submission": prediction.path,
        "predicted_images": len(prediction.image_ids),
        "plots": plots,
        "seconds": round(time.perf_counter() - start, 1),
    }
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    say("== done ==\n" + json.dumps(summary, indent=1))
    return summary


def add_arguments(parser):
    parser.add_argument("--data", default=None, help="competition-layout folder (default: data/sample)")
    parser.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    parser.add_argument("--pretrain-epochs", type=int, default=DEMO_PRETRAIN_EPOCHS)
    parser.add_argument("--finetune-steps", type=int, default=DEMO_FINETUNE_STEPS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--allow-cpu", action="store_true",
                        help="run on the CPU even where a TPU/GPU exists that JAX cannot see (else refuse)")


def run(args):
    from kitlib import locations  # noqa: PLC0415

    data_dir = args.data or locations.find_data_dir()
    run_demo(data_dir, args.out, args.pretrain_epochs, args.finetune_steps, args.seed, allow_cpu=args.allow_cpu)
