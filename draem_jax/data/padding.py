"""Evaluation batches of any size on any number of devices: pad, then drop the pad rows.

A function jitted over D devices needs a batch that splits into D equal shards, and P
processes each feed an equal share of it. Evaluation, validation, calibration and prediction
therefore run global batches of `padded_batch_size(eval.batch_size, D)` rows: the requested
size rounded up to a multiple of D (a multiple of P as well: D is P times the devices of one
process). Only the last batch holds pad rows: index -1, zeros on the way in, dropped on the
way out (`evaluator.predict_split` keeps the rows whose index is >= 0). So any number of
images runs on any number of devices, and eval.batch_size never has to match the hardware.
"""

import numpy as np


def padded_batch_size(batch_size: int, num_devices: int) -> int:
  """`batch_size` rounded up to a multiple of `num_devices` (both positive)."""
  if batch_size < 1 or num_devices < 1:
    raise ValueError(f"batch_size={batch_size} and num_devices={num_devices} must be >= 1.")
  return -(-batch_size // num_devices) * num_devices


def batch_indices(num_examples: int, global_batch_size: int, process_index: int = 0,
                  process_count: int = 1) -> list[np.ndarray]:
  """This process's rows of every global batch over `num_examples` examples.

  Global batch b holds examples [b G, (b + 1) G), G = `global_batch_size`; process p loads its
  rows [p G/P, (p + 1) G/P) of it, so the processes' batches concatenated in process order are
  the global batch.

  Returns:
    ceil(num_examples / G) int64 arrays of shape (G / P,): example indices, -1 for pad rows
    past the last example.
  """
  if global_batch_size % process_count:
    raise ValueError(f"global batch {global_batch_size} does not split over {process_count} "
                     "processes; round it up with padded_batch_size first.")
  local = global_batch_size // process_count
  out = []
  for b in range(-(-num_examples // global_batch_size)):
    index = b * global_batch_size + process_index * local + np.arange(local, dtype=np.int64)
    out.append(np.where(index < num_examples, index, -1))
  return out


def take_rows(array: np.ndarray, index: np.ndarray) -> np.ndarray:
  """array[index] along the leading axis, with zero rows where index is -1 (pad rows)."""
  valid = index >= 0
  rows = np.asarray(array)[np.where(valid, index, 0)]
  return np.where(valid.reshape((-1,) + (1,) * (rows.ndim - 1)), rows, 0).astype(rows.dtype)
