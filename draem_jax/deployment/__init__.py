"""Deployment: ONNX / jax.export artifacts (`export`, `onnx_ops`), the 8-bit model
(`quantize`) and the JAX-free ONNX runner (`runner`).

Kept free of imports: the runner must import without JAX.
"""
