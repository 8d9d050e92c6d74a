"""The layers of BiT's ResNet-v2 (``kitlib.models.resnetv2``) as Keras 3 layers: a convolution of a weight-standardised
kernel (`StandardizedConv2D`), GroupNorm in float32 (`GroupNorm`), and the host-drawn He-normal initializer
(`HostNormal`). All three are registered for ``.keras`` files under the package name "kitlib".
"""

import numpy as np

from kitlib.compat import keras

ops = keras.ops

GROUPS = 32
GN_EPSILON = 1e-5
WS_EPSILON = 1e-10


@keras.saving.register_keras_serializable(package="kitlib")
class HostNormal(keras.initializers.Initializer):
    """He-normal kernels drawn with numpy on the host. Same role as "he_normal" (the scale is
    irrelevant under weight standardisation), without compiling one XLA random program per kernel
    shape: building R50x1 on a CPU takes a second instead of tens. Seeded from numpy's global state,
    which ``keras.utils.set_random_seed`` sets."""

    def __call__(self, shape, dtype=None):
        fan_in = int(np.prod(shape[:-1])) or 1
        rng = np.random.default_rng(np.random.randint(0, 2**31 - 1))
        values = rng.standard_normal(tuple(shape), dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        return ops.convert_to_tensor(values, dtype=dtype or "float32")

    def get_config(self):
        return {}


@keras.saving.register_keras_serializable(package="kitlib")
class StandardizedConv2D(keras.layers.Layer):
    """2-D convolution (no bias, "valid" padding) of a weight-standardised kernel.

    The kernel (HWIO, float32) is standardised per output channel over H, W and the input channels,
    ``(w - mean) / sqrt(var + 1e-10)``, in float32, then cast to the compute dtype for the convolution.
    """

    def __init__(self, filters, kernel_size, strides=1, kernel_initializer=None, **kwargs):
        kwargs.setdefault("autocast", False)  # the kernel is read in float32 and cast by hand
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        self.strides = (strides, strides) if isinstance(strides, int) else tuple(strides)
        self.kernel_initializer = keras.initializers.get(kernel_initializer or HostNormal())

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(f"{self.name}: the input channels must be known")
        self.kernel = self.add_weight(name="kernel", shape=(*self.kernel_size, int(channels), self.filters),
                                      initializer=self.kernel_initializer, dtype="float32", trainable=True)

    def standardized_kernel(self):
        """The effective kernel, float32: zero mean and unit variance per output channel."""
        kernel = ops.cast(self.kernel.value, "float32")
        mean, var = ops.moments(kernel, axes=(0, 1, 2), keepdims=True)
        return (kernel - mean) / ops.sqrt(var + WS_EPSILON)

    def call(self, inputs):
        kernel = ops.cast(self.standardized_kernel(), inputs.dtype)
        return ops.conv(inputs, kernel, strides=self.strides, padding="valid")

    def compute_output_shape(self, input_shape):
        def out(size, k, s):
            return None if size is None else (size - k) // s + 1

        return (input_shape[0], out(input_shape[1], self.kernel_size[0], self.strides[0]),
                out(input_shape[2], self.kernel_size[1], self.strides[1]), self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": list(self.kernel_size),
                "strides": list(self.strides),
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer)}


@keras.saving.register_keras_serializable(package="kitlib")
class GroupNorm(keras.layers.Layer):
    """GroupNorm over channels-last inputs: moments over H, W and each group's channels, in float32.

    ``y = (x - mean) / sqrt(var + epsilon) * gamma + beta``, gamma/beta per channel (float32); the
    result is cast back to the input dtype.
    """

    def __init__(self, groups=GROUPS, epsilon=GN_EPSILON, **kwargs):
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.groups = int(groups)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None or int(channels) % self.groups:
            raise ValueError(f"{self.name}: GroupNorm with {self.groups} groups needs a channel count that "
                             f"they divide; got {channels} channels")
        channels = int(channels)
        self.gamma = self.add_weight(name="gamma", shape=(channels,), initializer="ones", dtype="float32")
        self.beta = self.add_weight(name="beta", shape=(channels,), initializer="zeros", dtype="float32")

    def call(self, inputs):
        dtype = inputs.dtype
        x = ops.cast(inputs, "float32")
        shape = ops.shape(x)
        channels = x.shape[-1]
        grouped = ops.reshape(x, (shape[0], shape[1], shape[2], self.groups, channels // self.groups))
        mean, var = ops.moments(grouped, axes=(1, 2, 4), keepdims=True)
        grouped = (grouped - mean) * ops.rsqrt(var + self.epsilon)
        x = ops.reshape(grouped, shape)
        x = x * ops.cast(self.gamma.value, "float32") + ops.cast(self.beta.value, "float32")
        return ops.cast(x, dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "groups": self.groups, "epsilon": self.epsilon}
