"""The whole kit in one command: SwAV pretraining -> BiT-HyperRule fine-tuning -> TTA submission.

``python -m kitlib demo --data data/sample --out runs/demo`` runs, on the bundled sample and two CPU
cores in about a minute, the same functions the notebooks and the other commands call, all on Keras 3
(JAX) with TensorFlow reading the data:

    1. ``kitlib.swav.pretrain``   a small backbone learns from multi-crops of unlabelled images and is
                                  exported as ``pretrain/backbone.keras``
    2. ``kitlib.bit.finetune``    that backbone + a zero head, fine-tuned with the BiT-HyperRule (steps
                                  shortened for the demo), saved as ``finetune/classifier.keras``
    3. ``kitlib.bit.predict``     test images -> TTA -> validated submission.csv

and writes the pictures that tell whether each step worked: the SwAV loss against ln K, the
fine-tuning schedule, the confusion matrix. The settings are the CPU smoke presets
(``PretrainConfig.smoke``, ``FinetuneConfig.smoke``, each departure from the papers explained there);
on real data and an accelerator use the three commands with their real settings.
"""

import dataclasses
import json
import os
import time

from kitlib import checks, command
from kitlib.bit import tta
from kitlib.command import setting

DEMO_PRETRAIN_EPOCHS = 40
DEMO_FINETUNE_STEPS = 60
DEMO_TTA = "flip"


def _save(figure, path):
    figure.savefig(path, dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return path


@dataclasses.dataclass(frozen=True)
class DemoConfig(command.Config):
    """What the demo asks for (``python -m kitlib demo --help`` shows each field as a flag)."""
    data_dir: str = setting(None, "competition-layout folder (the bundled sample when not given)", flag="--data")
    out_dir: str = setting("runs/demo", "output folder: pretrain/, finetune/, submission.csv, the plots",
                           flag="--out")
    pretrain_epochs: int = setting(DEMO_PRETRAIN_EPOCHS, "SwAV epochs", valid=checks.integer(0))
    finetune_steps: int = setting(DEMO_FINETUNE_STEPS, "fine-tuning steps", valid=checks.integer(2))
    tta: str = setting(DEMO_TTA, "test-time augmentation views of the submission",
                       valid=checks.satisfies(tta.parse_tta, "a preset or comma list of views"))
    seed: int = setting(0, "seed of all three steps", valid=checks.integer(0))
    allow_cpu: bool = setting(False, "run on the CPU even where a TPU/GPU exists that JAX cannot see")
    verbose: int = setting(1, "0 silent, 1 each step's plan and a line per epoch", choices=(0, 1))

    @classmethod
    def smoke(cls, **overrides):
        """The demo is itself the smoke run (the steps' smoke presets)."""
        return cls(**overrides)


CONFIG = DemoConfig


def plan(config, rt=None):
    """The three steps' configs (each step is planned when it starts: its input is the step before's output).

    Returns:
        a `kitlib.command.Plan` with ``parts`` {"pretrain", "finetune", "predict"}: the steps' configs.
    """
    from kitlib import command, locations  # noqa: PLC0415
    from kitlib.bit import finetune, predict  # noqa: PLC0415
    from kitlib.swav import pretrain  # noqa: PLC0415

    settings, reasons = config, {}
    if config.data_dir is None:
        settings = dataclasses.replace(config, data_dir=locations.find_data_dir())
        reasons["data_dir"] = "the competition's data when attached, else the bundled sample"
    rt = rt or command.runtime_for(config)
    quiet = 2 if config.verbose else 0
    data, out = settings.data_dir, settings.out_dir
    parts = dict(
        pretrain=pretrain.PretrainConfig.smoke(data_dir=data, out_dir=os.path.join(out, "pretrain"),
                                               epochs=config.pretrain_epochs, seed=config.seed, verbose=quiet),
        finetune=finetune.FinetuneConfig.smoke(data_dir=data, backbone=os.path.join(out, "pretrain", "backbone.keras"),
                                               out_dir=os.path.join(out, "finetune"), steps=config.finetune_steps,
                                               seed=config.seed, verbose=quiet),
        predict=predict.PredictConfig(data_dir=data, model=os.path.join(out, "finetune"), tta=config.tta,
                                      out=os.path.join(out, "submission.csv"), verbose=config.verbose))
    return command.Plan("demo", settings, reasons, command.runtime_facts(rt), parts=parts, rt=rt)


def run(plan):
    """Pretrain, fine-tune and predict as planned; writes the plots and ``summary.json``; returns the summary.

    Everything goes under ``out_dir``: ``pretrain/`` (config.json, checkpoints, history.csv,
    backbone.keras), ``finetune/`` (classifier.keras + classifier.json, config.json, finetune.json,
    history.csv), ``submission.csv``, the plots ``*.png`` and ``summary.json``.
    """
    from kitlib import command, viz  # noqa: PLC0415
    from kitlib.bit import finetune, predict  # noqa: PLC0415
    from kitlib.swav import pretrain  # noqa: PLC0415

    out_dir, rt, verbose = plan.settings.out_dir, plan.rt, plan.settings.verbose
    os.makedirs(out_dir, exist_ok=True)
    plan.save(out_dir)
    start = time.perf_counter()
    steps = {}
    for name, module, title in ((("pretrain", pretrain, "1/3 SwAV pretraining"),
                                 ("finetune", finetune, "2/3 BiT-HyperRule fine-tuning of the SwAV backbone"),
                                 ("predict", predict, "3/3 prediction with TTA -> submission.csv"))):
        step = module.plan(plan.parts[name], rt)
        if verbose:
            print(f"== {title} ==\n{step.describe()}")
        steps[name] = module.run(step)
    swav, tuned, prediction = steps["pretrain"], steps["finetune"], steps["predict"]
    plots = {"swav_loss": _save(viz.plot_swav_history(swav.history, swav.ln_k), os.path.join(out_dir, "swav_loss.png")),
             "schedule": _save(viz.plot_bit_schedules([tuned.rule]), os.path.join(out_dir, "schedule.png"))}
    if tuned.evaluation is not None:
        plots["confusion_matrix"] = _save(
            viz.plot_confusion_matrix(tuned.evaluation["confusion_matrix"], tuned.source.class_names),
            os.path.join(out_dir, "confusion_matrix.png"))
    summary = {
        "devices": rt.num_devices, "device_kind": rt.kind,
        "swav_final_loss": swav.history[-1]["loss"] if swav.history else None, "ln_k": swav.ln_k,
        "swav_collapsed": swav.collapsed, "backbone": swav.backbone_path,
        "finetune_val_accuracy": tuned.evaluation["accuracy"] if tuned.evaluation else None,
        "classifier": tuned.out_dir, "submission": prediction.path, "predicted_images": len(prediction.image_ids),
        "plots": plots, "seconds": round(time.perf_counter() - start, 1)}
    command.write_json(os.path.join(out_dir, "summary.json"), summary)
    if verbose:
        print("== done ==\n" + json.dumps(summary, indent=1))
    return summary
