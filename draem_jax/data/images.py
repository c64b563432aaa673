"""Image decoding and resizing; lives in `draem_jax.image_io` (numpy + Pillow only) so that the
JAX-free deployment runner can use the training-identical resize. Re-exported here."""

from draem_jax.image_io import *  # noqa: F401,F403  pylint: disable=wildcard-import
from draem_jax.image_io import _linear_taps, _open, _size_hw, _to_rgb, _to_uint8  # noqa: F401
