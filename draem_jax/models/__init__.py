"""DRAEM's networks (`networks`) and the layers they are built from (`layers`).

`from draem_jax import models` gives the public surface below; code that replaces a layer
while tracing (`draem_jax.deployment.onnx_ops`) patches `models.layers`, where it is looked up.
"""

from draem_jax.models import layers
from draem_jax.models import networks
from draem_jax.models.layers import (
    LAYER_IMPLS, SSPCAB, BatchNorm, Block, ConvBNReLU, UpConvBNReLU, align_corners_matrix,
    batch_norm_train, batch_norm_train_plain, bn_scale_init, channel_sum, conv_kernel_init,
    max_pool, max_pool_2x2, resolve_layer_impl, sspcab_loss, torch_conv_bias_init, upsample,
    upsample2x_align_corners, upsample2x_align_corners_plain, _max_pool, _max_pool_plain)
from draem_jax.models.networks import (
    DRAEM, VARIANTS, XLA_CPU_COMPILER_OPTIONS, DiscriminativeOnly, DiscriminativeSubNetwork,
    ReconstructiveAE, ReconstructiveSubNetwork, _cpu_options_supported, anomaly_map,
    count_params, create_model, init_variables, predict, xla_compiler_options)
