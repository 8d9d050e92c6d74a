"""kitlib.swav.budget: the epochs a budget affords from measured step times (a fake clock where the arithmetic
is the point, a real Keras fit where the timing is), the crop search, and the paths that keep the image-count
epochs (several processes, a preflight, a resumed run)."""

import dataclasses

import numpy as np
import pytest

from kitlib import checkpoint, command
from kitlib.compat import keras, tf
from kitlib.swav import budget, pretrain


def test_affordable_epochs_is_the_budget_left_over_the_epoch_time():
    # 10 min x 0.95 = 570 s; 30 s overhead -> 540 s; 50 steps x 0.2 s = 10 s per epoch -> 54 epochs
    assert budget.affordable_epochs(600, 0.2, 50, 30, 400) == 54
    assert budget.affordable_epochs(600, 0.2, 50, 30, 40) == 40        # the cap
    assert budget.affordable_epochs(600, 100.0, 50, 30, 400) == 1      # not even one epoch: one
    assert budget.affordable_epochs(600, 0.2, 50, 30, 400, epoch_seconds=2.0) == 45  # 540 s / (10 s + 2 s)
    with pytest.raises(ValueError, match="positive"):
        budget.affordable_epochs(600, 0.0, 50, 30, 400)


def _measure(step_seconds):
    """A fake `time_steps`: each crop spec's step time from the table, 2 s compile, 5 s of timing, no
    checkpoint time."""
    calls = []

    def measure(spec):
        calls.append(spec)
        return 2.0, step_seconds[spec], 5.0, 0.0

    return measure, calls


def test_fit_keeps_the_largest_crop_the_budget_affords():
    candidates = [(64, "64"), (48, "48"), (32, "32")]
    measure, calls = _measure({"64": 0.4, "48": 0.2, "32": 0.1})
    chosen, timings = budget.fit(candidates, measure, 10, 60, 64, 400, images_wanted=150_000)
    # 64 px: (570 - 7) // 24 = 23 epochs, 88,320 images: too few; 48 px: (570 - 12) // 12 = 46 epochs, 176,640
    assert [t.crop for t in timings] == [64, 48] and calls == ["64", "48"]
    assert (chosen.crop, chosen.epochs, chosen.images_seen) == (48, 46, 46 * 60 * 64)
    fast, _ = budget.fit(candidates, _measure({"64": 0.01, "48": 1, "32": 1})[0], 10, 60, 64, 400, 150_000)
    assert (fast.crop, fast.epochs) == (64, 400)  # affordable at the largest size: the cap, nothing else timed
    slow, timings = budget.fit(candidates, _measure({"64": 9, "48": 9, "32": 9})[0], 10, 60, 64, 400, 150_000)
    assert slow.crop == 32 and len(timings) == 3 and slow.epochs == 1  # nothing affords it: the smallest


def test_describe_says_what_was_timed_and_the_estimate():
    chosen, timings = budget.fit([(64, "64"), (32, "32")], _measure({"64": 0.4, "32": 0.1})[0], 10, 60, 64, 400,
                                 150_000)
    line = budget.describe(chosen, timings, 10, 60)
    assert line.startswith("the 10-minute budget on this machine") and "64 px: 0.4 s per step" in line
    estimate = budget.estimate_seconds(chosen, 60, 10.0)
    assert estimate <= 600 and f"about {estimate / 60:.1f} minutes" in line
    slower = dataclasses.replace(chosen, epoch_seconds=1.0)  # each epoch's checkpoint counts
    assert budget.estimate_seconds(slower, 60, 10.0) == pytest.approx(estimate + chosen.epochs)


def test_time_steps_times_a_real_fit_and_stops_when_the_seconds_are_up():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer="sgd", loss="mse")
    data = tf.data.Dataset.from_tensors((np.ones((8, 4), np.float32), np.ones((8, 1), np.float32))).repeat()
    compile_s, step_s, probe_s, epoch_s = checkpoint.time_steps(model, data, skip=2, steps=5)
    assert 0 < step_s < compile_s <= probe_s and 0 < epoch_s < probe_s
    assert int(model.optimizer.iterations.numpy()) == 7
    checkpoint.time_steps(model, data, skip=2, steps=50, max_seconds=0.0)  # the first timed step is past 0 s
    assert int(model.optimizer.iterations.numpy()) == 7 + 3
    model.compile(optimizer="sgd", loss="mse", steps_per_execution=4)  # one callback per 4 steps
    compile_s, step_s, _, _ = checkpoint.time_steps(model, data, steps_per_execution=4, skip=2, steps=3)
    assert int(model.optimizer.iterations.numpy()) == 4 * 5 and 0 < step_s < compile_s


def _config(tmp_path, **kw):
    return pretrain.PretrainConfig(data_dir="d", out_dir=str(tmp_path), seed=0, budget_minutes=10.0,
                                   crops="2x64@0.3-1,4x32@0.1-0.3", epochs=37, warmup_epochs=1, max_steps_per_epoch=60,
                                   global_batch_size=64, **kw)


def _never(spec):
    raise AssertionError("nothing should be timed")


def test_several_processes_and_a_preflight_keep_the_image_count_epochs(tmp_path):
    for config, processes, said in ((_config(tmp_path), 2, "several processes"),
                                    (_config(tmp_path, preflight="tpu-v5e-8"), 1, "preflight")):
        reasons = {"epochs": "from the image count"}
        sized, facts = budget.size_run(config, reasons, "small", 64, _never, processes)
        assert sized == config and facts == dict(minutes=10.0, timed=False)
        assert said in reasons["epochs"] and "not timed" in reasons["epochs"]


def test_the_rules_crop_is_searched_and_a_resumed_run_keeps_what_the_budget_set(tmp_path):
    reasons = {k: "the rule" for k in ("epochs", "crops", "warmup_epochs")}
    measure, calls = _measure({"2x64@0.3-1,4x32@0.1-0.3": 0.4, "2x48@0.3-1,4x24@0.1-0.3": 0.2})
    sized, facts = budget.size_run(_config(tmp_path), reasons, "small", 256, measure, print_fn=lambda *a: None)
    assert (sized.crops, sized.epochs, sized.warmup_epochs) == ("2x48@0.3-1,4x24@0.1-0.3", 46, 1)
    assert facts["timed"] and [t["crop"] for t in facts["timings"]] == [64, 48]
    assert "48 px big crops" in reasons["crops"] and "budget" in reasons["epochs"]
    plan = command.Plan("pretrain", sized, dict(reasons), dict(budget=facts))
    plan.save(str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    again = {k: "the rule" for k in ("epochs", "crops", "warmup_epochs")}
    resumed, resumed_facts = budget.size_run(_config(tmp_path), again, "small", 256, _never)
    assert (resumed.crops, resumed.epochs) == (sized.crops, 46) and resumed_facts == facts
    assert again["epochs"] == budget.RESUMED


def test_crops_given_are_kept_and_only_the_epochs_are_sized(tmp_path):
    reasons = {"epochs": "the rule"}
    measure, calls = _measure({"2x64@0.3-1,4x32@0.1-0.3": 0.4})
    sized, _ = budget.size_run(_config(tmp_path), reasons, "small", 256, measure, print_fn=lambda *a: None)
    assert calls == ["2x64@0.3-1,4x32@0.1-0.3"] and sized.epochs == 23
    assert dataclasses.replace(sized, epochs=37) == _config(tmp_path)


@pytest.mark.slow
def test_the_plan_times_the_sample_and_keeps_within_the_budget(sample_dir, tmp_path):
    config = pretrain.PretrainConfig(data_dir=sample_dir, out_dir=str(tmp_path), seed=0, budget_minutes=0.5,
                                     global_batch_size=32, verbose=0)
    plan = pretrain.plan(config)
    s, facts = plan.settings, plan.facts["budget"]
    assert facts["timed"] and facts["timings"][0]["crop"] == 64  # the sample's 256 px images: 64 px first
    chosen = budget.Timing(**facts["timings"][-1])
    assert (s.crops, s.epochs) == (chosen.crops, chosen.epochs) and s.epochs >= 1
    assert plan.reasons["epochs"].startswith("the 0.5-minute budget on this machine (timed 64 px: ")
    spent = sum(t["probe_seconds"] for t in facts["timings"])
    assert s.epochs == 1 or budget.estimate_seconds(chosen, s.max_steps_per_epoch, spent) <= 30
    assert plan.record()["facts"]["budget"] == command.json_ready(facts)  # config.json keeps the timings
    given = pretrain.plan(dataclasses.replace(config, epochs=3))
    assert given.settings.epochs == 3 and "budget" not in given.facts and "epochs" not in given.reasons


def test_the_length_said_up_front_uses_the_budgets_timing_or_times_the_run_itself(tmp_path):
    config = dataclasses.replace(_config(tmp_path), crops="2x32@0.3-1", epochs=100, max_steps_per_epoch=50,
                                 stop_after_minutes=60.0)
    timed = dict(timings=[dict(crops="2x32@0.3-1", compile_seconds=30.0, step_seconds=1.0, epoch_seconds=6.0)])
    # 30 s + 100 x (50 x 1 s + 6 s) = 5630 s = 93.8 minutes: 2 sessions of 60 (each starting with its compile)
    assert budget.length(config, _never, timed) == dict(minutes=93.8, sessions=2, limit_minutes=60.0)
    asked = []
    said = budget.length(config, lambda crops: asked.append(crops) or (6.0, 0.1, 8.0, 0.0))
    assert asked == ["2x32@0.3-1"] and said == dict(minutes=8.4, sessions=1, limit_minutes=60.0)  # 6 s + 100 x 5 s
