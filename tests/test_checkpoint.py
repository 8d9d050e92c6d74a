"""kitlib.checkpoint: every model and optimizer variable saved and restored, history.csv kept in step."""

import numpy as np
import pytest

from kitlib.compat import keras
from kitlib import checkpoint


def _model(units=4):
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(units)(inputs))
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def test_state_round_trips_weights_and_optimizer_slots_and_refuses_another_shape(tmp_path):
    trained = _model()
    x, y = np.random.default_rng(0).random((8, 3)), np.random.default_rng(1).random((8, 4))
    trained.fit(x, y, epochs=2, verbose=0)
    path = str(tmp_path / "state.npz")
    checkpoint.save_state(trained, path, epochs_done=2)
    fresh = _model()
    assert checkpoint.restore_state(fresh, path) == 2
    for a, b in zip(trained.variables + trained.optimizer.variables, fresh.variables + fresh.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a.value), np.asarray(b.value))
    assert int(fresh.optimizer.iterations) == int(trained.optimizer.iterations) > 0
    with pytest.raises(ValueError, match="does not fit this model"):
        checkpoint.restore_state(_model(units=5), path)
    assert [p.name for p in tmp_path.iterdir()] == ["state.npz"]  # written atomically, nothing left behind


def test_history_grows_by_epoch_and_is_truncated_to_a_resumed_checkpoint(tmp_path):
    path = str(tmp_path / "history.csv")
    assert checkpoint.read_history(path) == []
    for epoch in (1, 2, 3):
        checkpoint.append_history(path, {"epoch": epoch, "loss": 1.0 / epoch})
    checkpoint.append_history(path, {"epoch": 4, "loss": 0.2, "knn_acc": 0.5})  # a new column appears
    rows = checkpoint.read_history(path)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4] and rows[-1]["knn_acc"] == 0.5 and "knn_acc" not in rows[0]
    assert [r["epoch"] for r in checkpoint.truncate_history(path, 2)] == [1, 2]
    assert [r["epoch"] for r in checkpoint.read_history(path)] == [1, 2]


def test_extra_arrays_travel_with_the_state(tmp_path):
    model = _model()
    path = str(tmp_path / "state.npz")
    checkpoint.save_state(model, path, 3, extra={"best": 0.75, "best_w00000": np.ones((3, 4))})
    extra = checkpoint.saved_extra(path)
    assert float(extra["best"]) == 0.75 and extra["best_w00000"].shape == (3, 4)
    assert checkpoint.restore_state(_model(), path) == 3  # the extras are not variables
    checkpoint.save_state(model, path, 4)
    assert checkpoint.saved_extra(path) == {}


def test_stop_in_time_ends_on_the_boundary_before_the_limit_with_a_fake_clock():
    ticks = iter([100.0, 110.0, 130.0, 150.0, 165.0, 180.0])  # train begins at 100 s; epochs of 10, 20, 20, 15 s

    class Model:
        stop_training = False

    said = []
    stop = checkpoint.StopInTime(170 / 60, clock=lambda: next(ticks), print_fn=said.append)
    stop.set_model(Model())
    stop.set_params({"epochs": 10})
    stop.on_train_begin()
    for epoch in range(10):
        stop.on_epoch_end(epoch)
        if stop.model.stop_training:
            break
    # after epoch 3 (at 150 s) the longest epoch (20 s) would end at 170 s, not past the limit; after epoch 4
    # (165 s) it would end at 185 s: stop there, 4 epochs done
    assert stop.stopped_after == 4
    # after the first epoch (10 s, at 110 s) the other 9 need 90 s more, past 170 s: this session holds 6 of
    # them, a fresh one (its start-up as long as this one's, 100 s) 7: 2 sessions
    assert len(said) == 1 and "remaining 9 epoch(s)" in said[0] and "about 2 sessions" in said[0]
    last = checkpoint.StopInTime(0.001, clock=lambda: 1e6)
    last.set_model(Model())
    last.set_params({"epochs": 1})
    last.on_train_begin()
    last.on_epoch_end(0)  # the last epoch: nothing to stop
    assert last.stopped_after is None and not last.model.stop_training


def test_the_default_limit_is_kaggles_session_less_the_margin_and_none_elsewhere():
    assert checkpoint.default_stop_minutes("TPU", on_kaggle=True)[0] == 9 * 60 - checkpoint.STOP_MARGIN_MINUTES
    assert checkpoint.default_stop_minutes("GPU", on_kaggle=True)[0] == 12 * 60 - checkpoint.STOP_MARGIN_MINUTES
    assert "9 hours" in checkpoint.default_stop_minutes("TPU", on_kaggle=True)[1]
    assert checkpoint.default_stop_minutes("GPU", on_kaggle=False) == (None, None)
    assert 0 < checkpoint.process_age_seconds() < 24 * 3600  # this test process started a while ago


def test_sessions_needed_counts_each_sessions_start_up():
    assert checkpoint.sessions_needed(400, 520) == 1 and checkpoint.sessions_needed(900, None) == 1
    assert checkpoint.sessions_needed(900, 520) == 2          # 520 + 380
    assert checkpoint.sessions_needed(1100, 520, 20) == 3     # 20 + 500, then 500, then 80 more of work
    assert isinstance(checkpoint.sessions_needed(1100, 520, 20), int)
    assert checkpoint.estimate_warning("x", {"estimate": checkpoint.estimate(400, 520)}) is None
    assert "900 minutes, 2 sessions of 520" in checkpoint.estimate_warning("x", {"estimate": checkpoint.estimate(900, 520)})
