"""Is SwAV learning? Callbacks that stop on a NaN loss and warn at the collapse floor ln K."""

import math

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
