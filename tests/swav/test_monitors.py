"""kitlib.swav.monitors: the collapse warning at ln K and the stop on a NaN loss."""

import math

from kitlib.swav import monitors as swav_monitors


class _FakeModel:
    stop_training = False

def test_collapse_monitor_warns_at_ln_k_and_stops_on_nan():
    messages = []
    monitor = swav_monitors.CollapseMonitor(ln_k=math.log(50), patience=2, print_fn=messages.append)
    monitor.set_model(_FakeModel())
    monitor.on_epoch_end(0, {"loss": math.log(50)})
    assert not messages  # the first epochs start near ln K
    monitor.on_epoch_end(1, {"loss": 3.0})
    assert not messages and not monitor.collapsed
    monitor.on_epoch_end(2, {"loss": math.log(50) + 0.001})
    assert monitor.collapsed and "ln K" in messages[0] and "same image" in messages[0]
    monitor.on_epoch_begin(3)
    monitor.on_train_batch_end(0, {"loss": float("nan")})
    assert monitor.model.stop_training and monitor.nan_epoch == 3 and "nan" in messages[-1]
