"""How jax2onnx lowers the model's pooling and upsampling: one ONNX MaxPool / Resize node each.

Traced as written, the 2x2 max-pool (`models.layers._max_pool`, four strided taps) and the
align-corners upsampling (`models.layers.upsample2x_align_corners`, 2-tap gathers along each axis)
become Reshape / Gather / GatherND chains on NHWC tensors. Those stop ONNX Runtime from
cancelling the NHWC <-> NCHW transposes that jax2onnx puts around every Conv: at 256x256 with
the paper's widths 38 transposes survived and took 22% of the CPU time (bench/RESULTS.md).

Importing this module registers a jax2onnx plugin that, while `jax2onnx.to_onnx` traces (and
only then), replaces
  * `models.layers._max_pool` (and `_max_pool_plain`) by `flax.linen.max_pool` (2x2, stride 2, VALID: the same values, odd
    trailing rows and columns dropped alike), which jax2onnx lowers to MaxPool;
  * `models.layers.upsample2x_align_corners` (and its `_plain` twin) by a primitive lowered to
    Resize(mode=linear, coordinate_transformation_mode=align_corners, scales (1, 2, 2, 1)),
    the same 2-tap interpolation (equal to float32 rounding; tests/test_export.py).
Training, evaluation and the jax.export artifact are untouched.
"""

from typing import Any

import flax.linen as nn
import jax
from jax.extend.core import Primitive
import numpy as np
import onnx_ir as ir
# jax2onnx's plugin interface, as its own plugins use it (requirements.txt pins jax2onnx 0.17).
from jax2onnx.plugins import _ir_shapes
from jax2onnx.plugins._patching import MonkeyPatchSpec
from jax2onnx.plugins.plugin_system import PrimitiveLeafPlugin, register_primitive

from draem_jax import models

_UPSAMPLE = Primitive("draem_upsample2x_align_corners")
# Outside of jax2onnx's tracing (e.g. when the converter evaluates the function eagerly) the
# primitive computes what the model computes.
_UPSAMPLE.def_impl(models.upsample2x_align_corners)


def _max_pool_for_onnx(x: jax.Array) -> jax.Array:
  """(B, H, W, C) -> (B, H // 2, W // 2, C), as `models.layers._max_pool`."""
  # Looked up at call time: jax2onnx patches flax.linen.max_pool itself while tracing.
  return nn.max_pool(x, window_shape=(2, 2), strides=(2, 2), padding="VALID")


@register_primitive(jaxpr_primitive=_UPSAMPLE.name, context="primitives.draem_jax",
                    component="upsample2x_align_corners", since="draem-jax",
                    onnx=[{"component": "Resize",
                           "doc": "https://onnx.ai/onnx/operators/onnx__Resize.html"}])
class Upsample2xAlignCorners(PrimitiveLeafPlugin):
  """`models.layers.upsample2x_align_corners` (B, H, W, C) -> (B, 2H, 2W, C) as one ONNX Resize."""

  _PRIM = _UPSAMPLE

  @staticmethod
  def abstract_eval(x: Any) -> jax.core.ShapedArray:
    b, h, w, c = x.shape
    return jax.core.ShapedArray((b, 2 * h, 2 * w, c), x.dtype)

  def lower(self, ctx: Any, eqn: Any) -> None:
    (x_var,), (y_var,) = eqn.invars, eqn.outvars
    x = ctx.get_value_for_var(x_var, name_hint=ctx.fresh_name("upsample_in"))
    b, h, w, c = x_var.aval.shape
    roi = ctx.builder.add_initializer_from_array(name=ctx.fresh_name("upsample_roi"),
                                                 array=np.zeros((0,), np.float32))
    scales = ctx.builder.add_initializer_from_array(
        name=ctx.fresh_name("upsample_scales"), array=np.asarray([1, 2, 2, 1], np.float32))
    y = ctx.builder.Resize(x, roi, scales, _outputs=[ctx.fresh_name("upsample_out")],
                           mode="linear", coordinate_transformation_mode="align_corners")
    y.type = ir.TensorType(x.type.dtype)
    _ir_shapes._stamp_type_and_shape(  # pylint: disable=protected-access
        y, (b if isinstance(b, int) else None, 2 * h, 2 * w, c))
    _ir_shapes._ensure_value_metadata(ctx, y)  # pylint: disable=protected-access
    ctx.bind_value_for_var(y_var, y)

  @classmethod
  def binding_specs(cls) -> list[MonkeyPatchSpec]:
    # Entered by jax2onnx around every to_onnx call, undone after it.
    # Both layer implementations (model.layer_impl) compute the same values.
    return [MonkeyPatchSpec(target=models.layers, attr=attr, make_value=lambda _: cls._PRIM.bind)
            for attr in ("upsample2x_align_corners", "upsample2x_align_corners_plain")] + [
                MonkeyPatchSpec(target=models.layers, attr=attr,
                                make_value=lambda _: _max_pool_for_onnx)
                for attr in ("_max_pool", "_max_pool_plain")]


_UPSAMPLE.def_abstract_eval(Upsample2xAlignCorners.abstract_eval)
