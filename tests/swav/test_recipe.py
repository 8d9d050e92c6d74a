"""kitlib.swav.recipe.rule as a pure function: its table at a few sizes, the paper's settings at scale, and how
pretrain.resolve lets any given field override it."""

import dataclasses
import math

import pytest

from kitlib import command
from kitlib.swav import pretrain, recipe


def test_imagenet_scale_gets_the_papers_recipe():
    chosen = recipe.rule(1_281_167, (375, 500), 4096)
    s = chosen.settings
    assert chosen.regime == "paper"
    assert (s["backbone"], s["crops"], s["prototypes"], s["optimizer"]) == (
        "resnet50", "2x224@0.14-1,6x96@0.05-0.14", 3000, "lars")
    assert (s["base_lr"], s["final_lr"]) == pytest.approx((4.8, 0.0048))
    assert (s["warmup_epochs"], s["hidden_dim"], s["queue_length"], s["epsilon"]) == (10, 2048, 0, 0.05)
    assert (s["color_strength"], s["gray_p"], s["blur_p"]) == (1.0, 0.2, 0.5)


def test_cassava_at_batch_256_gets_the_paper_queue():
    s = recipe.rule(21_397, (600, 800), 256).settings
    assert (s["backbone"], s["prototypes"], s["base_lr"]) == ("resnet50", 3000, pytest.approx(0.6))
    assert (s["queue_length"], s["queue_start_epoch"]) == (3840, 15)
    assert recipe.rule(21_397, (600, 800), 512).settings["queue_length"] == 4096  # whole batches


@pytest.mark.parametrize("num_images, hw, batch, classes, crops, k, epochs, colour", [
    (1_797, (32, 32), 64, 10, "2x32@0.5-1,4x16@0.2-0.5", 100, 83, 0.5),     # digits
    (200, (32, 32), 64, 2, "2x32@0.5-1,4x16@0.2-0.5", 20, 400, 0.0),        # faces: crops only
    (1_560, (32, 32), 64, 13, "2x32@0.5-1,4x16@0.2-0.5", 130, 96, 0.5),     # photo tiles
    (100, (256, 340), 32, 5, "2x64@0.3-1,4x32@0.1-0.3", 50, 400, 0.0),      # the Cassava sample
    (5_000, (25, 25), 64, None, "2x32@0.5-1,4x16@0.2-0.5", 100, 30, 0.5),   # no label map
    (50_000, (32, 32), 256, None, "2x32@0.5-1,4x16@0.2-0.5", 1000, 20, 0.5),  # many, small
    (300, (64, 96), 64, None, "2x64@0.3-1,4x32@0.1-0.3", 10, 400, 0.0),     # K's floor
])
def test_small_data_table(num_images, hw, batch, classes, crops, k, epochs, colour):
    chosen = recipe.rule(num_images, hw, batch, classes)
    s = chosen.settings
    assert chosen.regime == "small"
    assert (s["crops"], s["prototypes"], s["epochs"], s["color_strength"]) == (crops, k, epochs, colour)
    assert (s["backbone"], s["budget_minutes"]) == ("small_cnn_pyramid", recipe.SMALL_BUDGET_MINUTES)
    assert (s["optimizer"], s["base_lr"], s["queue_length"], s["blur_p"]) == ("adam", 3e-3, 0, 0.0)
    assert s["gray_p"] == (0.2 if colour else 0.0)
    assert set(chosen.reasons) == set(s) and all(chosen.reasons.values())


def test_the_budget_may_lower_the_crop_from_the_image_size_to_32_px():
    assert recipe.crop_sides(340) == [64, 48, 32] and recipe.crop_sides(96) == [64, 48, 32]
    assert recipe.crop_sides(50) == [48, 32] and recipe.crop_sides(32) == [32] and recipe.crop_sides(20) == [16]
    lowered = recipe.small_crops(48, 96)
    assert lowered.value == "2x48@0.3-1,4x24@0.1-0.3" and "budget" in lowered.reason
    assert "the images" in recipe.small_crops(32, 32).reason and "slow" in recipe.small_crops(64, 96).reason
    assert recipe.rule(21_397, (600, 800), 256).settings["budget_minutes"] == 0.0  # the paper's epochs


def test_the_papers_k_at_scale_whatever_the_classes():
    assert recipe.rule(21_397, (600, 800), 256, num_classes=5).settings["prototypes"] == 3000


def test_the_regime_turns_on_both_the_number_and_the_size_of_images():
    assert recipe.rule(9_999, (600, 800), 256).regime == "small"
    assert recipe.rule(10_000, (600, 800), 256).regime == "paper"
    assert recipe.rule(10_000, (127, 800), 256).regime == "small"


def test_bad_sizes_raise():
    for args in [(0, (32, 32), 64), (10, (0, 32), 64), (10, (32, 32), 0)]:
        with pytest.raises(ValueError, match="positive"):
            recipe.rule(*args)


def test_default_batch_is_a_multiple_of_the_devices():
    assert [recipe.default_global_batch(n) for n in (100, 9_999, 10_000)] == [64, 64, 256]
    assert recipe.default_global_batch(100, num_devices=8) == 64
    assert recipe.default_global_batch(100, num_devices=3) == 63


def test_resolve_fills_what_was_not_given_and_keeps_what_was():
    given = pretrain.PretrainConfig(data_dir="d", out_dir="o", prototypes=50, crops="2x64@0.3-1,2x32@0.1-0.3")
    config, reasons, regime = pretrain.resolve(given, 1_797, 1, "CPU", (32, 32), num_classes=10)
    assert (config.prototypes, config.crops) == (50, "2x64@0.3-1,2x32@0.1-0.3")
    assert (config.backbone, config.optimizer, config.global_batch_size, config.epochs) == (
        "small_cnn_pyramid", "adam", 64, 83)
    assert regime == "small" and "prototypes" not in reasons and "backbone" in reasons
    assert (config.max_steps_per_epoch, config.freeze_prototypes_niters) == (28, 28)  # one epoch
    assert config.final_lr == pytest.approx(3e-6)
    short = _resolved(pretrain.PretrainConfig(data_dir="d", out_dir="o", epochs=5), 1_797, 1, "CPU", (32, 32), 10)
    assert (short.epochs, short.warmup_epochs) == (5, 0)  # the rule's warmup stays within 10 % of a short run


def test_an_optimizer_chosen_by_hand_gets_its_own_learning_rate():
    lars = _resolved(pretrain.PretrainConfig(data_dir="d", out_dir="o", optimizer="lars"), 1_797, 1, "CPU", (32, 32))
    assert (lars.base_lr, lars.final_lr) == pytest.approx((0.6 * (64 / 256) ** 0.75, 0.6 * (64 / 256) ** 0.75 / 1e3))
    adam = _resolved(pretrain.PretrainConfig(data_dir="d", out_dir="o", optimizer="adam"), 21_397, 1, "TPU", (600, 800))
    assert (adam.backbone, adam.base_lr) == ("resnet50", 3e-3)


def test_the_plan_describes_every_choice_with_its_reason():
    config, reasons, regime = pretrain.resolve(pretrain.PretrainConfig(data_dir="d", out_dir="o"), 1_797, 1, "CPU",
                                               (32, 32))
    plan = command.Plan("pretrain", config, reasons, dict(recipe=regime, num_images=1_797, image_hw=[32, 32]))
    lines = plan.describe().splitlines()
    assert len(lines) == 3 + len(reasons) and "recipe=\"small\", num_images=1797" in lines[0]
    assert any(line.startswith('    optimizer = "adam"') and "LARS" in line for line in lines)
    assert math.isclose(config.final_lr, config.base_lr * 1e-3) and "final_lr" in reasons
    assert "seed" in reasons and isinstance(config.seed, int)  # drawn, recorded, said so
    record = plan.record()
    assert record["settings"]["optimizer"] == "adam" and set(record["chosen"]) == set(reasons)
    lars, why, _ = pretrain.resolve(pretrain.PretrainConfig(data_dir="d", out_dir="o", optimizer="lars"), 1_797, 1,
                                    "CPU", (32, 32))
    assert "lars at batch 64" in why["base_lr"] and "optimizer" not in why  # the reason follows the value


def test_every_choice_of_the_recipe_is_a_pretrain_config_field_of_its_type():
    fields = {f.name: f.type for f in dataclasses.fields(pretrain.PretrainConfig)}
    for chosen in (recipe.rule(1_797, (32, 32), 64, 10), recipe.rule(21_397, (600, 800), 256)):
        for name, choice in chosen.choices().items():
            assert name in fields, name
            assert isinstance(choice.value, {"int": int, "float": (int, float), "str": str}[fields[name].__name__]
                              ), (name, choice.value)
            assert choice.reason and "kNN" not in choice.reason, name  # figures are in bench/README.md


def _resolved(config, *args, **kwargs):
    return pretrain.resolve(config, *args, **kwargs)[0]


def test_suggest_num_prototypes():
    assert recipe.suggest_num_prototypes() == 3000
    assert recipe.suggest_num_prototypes(5) == 50
    assert recipe.suggest_num_prototypes(1000) == 3000
