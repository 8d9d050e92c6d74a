"""Every plot in kitlib.viz draws a figure from the data the kit hands it, with the axes it promises."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from kitlib import viz  # noqa: E402
from kitlib.bit import hyperrule

RNG = np.random.default_rng(0)
NAMES = ["Cassava Bacterial Blight (CBB)", "Cassava Mosaic Disease (CMD)", "Healthy"]
CROPS = (RNG.random((3, 16, 16, 3)), RNG.random((3, 16, 16, 3)), RNG.random((3, 8, 8, 3)))
CASES = {
    "plot_bit_schedules": lambda: viz.plot_bit_schedules([hyperrule.HyperRule((600, 800), 1000, 64),
                                                          hyperrule.HyperRule((600, 800), 1000, 512)]),
    "plot_mixup_grid": lambda: viz.plot_mixup_grid(RNG.random((4, 8, 8, 3)), np.eye(3)[[0, 1, 2, 0]], NAMES),
    "plot_confusion_matrix": lambda: viz.plot_confusion_matrix([[3, 1, 0], [0, 2, 0], [1, 0, 4]], NAMES),
    "plot_fold_accuracy": lambda: viz.plot_fold_accuracy({"per_fold_accuracy": [0.8, 0.7, 0.9], "mean_accuracy": 0.8,
                                                          "oof_accuracy": 0.79}),
    "plot_training_history": lambda: viz.plot_training_history({"loss": [1.0, 0.5], "accuracy": [0.4, 0.8],
                                                                "val_loss": [1.1, 0.7], "val_accuracy": [0.3, 0.7]}),
    "plot_predictions": lambda: viz.plot_predictions([np.zeros((10, 12, 3), np.uint8)] * 2, ["a.jpg", "b.jpg"],
                                                     np.array([[0.2, 0.7, 0.1], [0.9, 0.05, 0.05]]), NAMES),
    "plot_tta_views": lambda: viz.plot_tta_views(RNG.random((3, 8, 8, 3)), ["identity", "flip", "crop"]),
    "plot_swav_history": lambda: viz.plot_swav_history([{"epoch": 1, "loss": 3.9, "usage_entropy": 3.0},
                                                        {"epoch": 2, "loss": 3.1, "usage_entropy": 3.5}], np.log(50)),
    "plot_prototype_usage": lambda: viz.plot_prototype_usage(np.full(10, 0.1)),
    "plot_feature_quality": lambda: viz.plot_feature_quality({"random init": {"knn": 0.6, "linear": 0.7},
                                                              "SwAV": {"knn": 0.85, "linear": 0.9}}),
    "show_crops": lambda: viz.show_crops(CROPS, [RNG.random((20, 24, 3))] * 3, max_rows=2),
    "show_crops without sources": lambda: viz.show_crops(CROPS, max_rows=2),
    "show_augmentations": lambda: viz.show_augmentations({"jitter": RNG.random((4, 8, 8, 3)),
                                                          "blur": RNG.random((4, 8, 8, 3))}),
    "plot_crop_distributions": lambda: viz.plot_crop_distributions(
        {"224 px crops": {"area": RNG.uniform(0.14, 1, 50), "aspect": RNG.uniform(0.75, 1.33, 50), "scale": (0.14, 1)}}),
}


def test_every_plot_function_is_covered():
    public = {name for name in dir(viz) if name.startswith(("plot_", "show_"))}
    assert public == {name.split()[0] for name in CASES}


@pytest.mark.parametrize("name", sorted(CASES))
def test_plot_returns_a_figure_with_drawn_axes(name):
    figure = CASES[name]()
    try:
        assert isinstance(figure, matplotlib.figure.Figure)
        drawn = [ax for ax in figure.axes if ax.has_data() or ax.images or ax.texts or ax.patches]
        assert drawn, f"{name} drew nothing"
    finally:
        plt.close(figure)


def test_suspects_are_titled_with_the_given_label_and_the_oof_prediction():
    fig = viz.plot_predictions([np.zeros((10, 12, 3), np.uint8)] * 2, ["a.jpg", "b.jpg"],
                               np.array([[0.2, 0.7, 0.1], [0.9, 0.05, 0.05]]), NAMES, labels=[0, 2])
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["CBB -> CMD 0.70\na.jpg", "Healthy -> CBB 0.90\nb.jpg"]
