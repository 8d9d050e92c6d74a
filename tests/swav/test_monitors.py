"""kitlib.swav.monitors: the collapse warning at ln K and the stop on a NaN loss."""

import math

import numpy as np

from kitlib.compat import keras
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


def test_the_checkpoint_callback_writes_each_epoch_and_never_a_diverged_one(tmp_path):
    import types  # noqa: PLC0415

    from kitlib import checkpoint  # noqa: PLC0415

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    watch = types.SimpleNamespace(nan_epoch=None)
    state, history = str(tmp_path / "state.npz"), str(tmp_path / "history.csv")
    callback = swav_monitors.CheckpointAndHistory(state, history, watch, ln_k=1.5)
    model.fit(np.ones((4, 3)), np.zeros((4, 2)), epochs=2, verbose=0, callbacks=[callback])
    rows = checkpoint.read_history(history)
    assert [r["epoch"] for r in rows] == [1, 2] and rows[0]["ln_k"] == 1.5 and "lr" in rows[0]
    assert checkpoint.restore_state(model, state) == 2
    watch.nan_epoch = 3
    callback.on_epoch_end(2, {"loss": float("nan")})
    assert checkpoint.restore_state(model, state) == 2 and len(checkpoint.read_history(history)) == 2
