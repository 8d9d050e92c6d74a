"""Is SwAV learning? Callbacks that stop on a NaN loss and warn at the collapse floor ln K, and the one that
checkpoints each epoch (never a diverged one)."""

import math

from kitlib import checkpoint, hosts
from kitlib.compat import keras

COLLAPSE_CAUSES = (
    "crops of one example that do not come from the same image (zipped, independently shuffled crop "
    "datasets); epsilon too large for the batch (try 0.03); prototypes unfrozen too early (raise "
    "freeze_prototypes_niters); augmentation too strong for a short run on little data (try crops "
    "only, larger crop scales); a learning rate too high; a batch much smaller than K without a queue")


class CollapseMonitor(keras.callbacks.Callback):
    """Stops on a NaN/inf loss; warns plainly when the epoch loss sits at the collapse floor ln K.

    At ln K the codes and predictions are uniform: nothing is being learned. The warning names the
    usual causes. ``collapsed`` and ``nan_epoch`` record what was seen.

    Args:
        ln_k: the floor (``SwAVModel.ln_k``). tolerance: relative band above and below ln K.
        patience: epochs to allow before warning (the loss starts near ln K).
    """

    def __init__(self, ln_k, tolerance=0.01, patience=3, print_fn=print):
        super().__init__()
        self.ln_k, self.tolerance, self.patience, self.print_fn = ln_k, tolerance, patience, print_fn
        self.collapsed, self.nan_epoch, self._warned = False, None, False
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.nan_epoch = self._epoch
            self.model.stop_training = True
            self.print_fn(f"kitlib: STOPPING: the SwAV loss became {float(loss)} in epoch {self._epoch + 1} "
                          f"(batch {batch + 1}). Usual causes: a learning rate too high, float16 without loss "
                          f"scaling, corrupt input images. The last good checkpoint is kept.")

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or self.nan_epoch is not None or epoch + 1 < self.patience:
            return
        self.collapsed = abs(float(loss) - self.ln_k) <= self.tolerance * self.ln_k
        if self.collapsed and not self._warned:
            self._warned = True
            self.print_fn(f"kitlib: WARNING: after {epoch + 1} epochs the SwAV loss {float(loss):.4f} sits at "
                          f"ln K = {self.ln_k:.4f}: codes and predictions are uniform, the model is not "
                          f"learning (collapse). Usual causes: {COLLAPSE_CAUSES}.")


class CheckpointAndHistory(keras.callbacks.Callback):
    """After each epoch: append the epoch's logs to history.csv, then save the state (never a diverged
    one: `monitor.nan_epoch` set means the last good state is kept)."""

    def __init__(self, state_path, history_path, monitor, ln_k):
        super().__init__()
        self.state_path, self.history_path, self.monitor, self.ln_k = state_path, history_path, monitor, ln_k

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor.nan_epoch is not None:
            return  # never overwrite the last good state with a diverged one
        row = {k: float(v) for k, v in (logs or {}).items()}
        # Keras 3 evaluates the schedule at the optimizer's step when its learning_rate is read
        row.update(epoch=epoch + 1, ln_k=self.ln_k, lr=float(self.model.optimizer.learning_rate))
        if hosts.is_writer():  # several processes: one writer (every variable is replicated on each)
            checkpoint.append_history(self.history_path, row)
            checkpoint.save_state(self.model, self.state_path, epoch + 1)
