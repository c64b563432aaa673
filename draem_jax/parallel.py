"""Device mesh, shardings and multi-host helpers.

draem-jax is data-parallel with `jax.jit` over a 1-D mesh whose single axis, 'data', spans
every device of every process: the train state is replicated, batches are sharded on their
leading (batch) axis. XLA inserts the gradient all-reduce, and BatchNorm statistics are those
of the global batch, exactly as on one device.
"""

from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from draem_jax.errors import ConfigError

DATA_AXIS = "data"


def maybe_initialize_distributed(distributed: bool) -> None:
  """Starts the multi-host runtime (TPU pods, multi-node GPU) when the config asks for it.

  On a TPU VM pod slice `jax.distributed.initialize()` discovers its peers itself; elsewhere it
  reads the coordinator address and process ids from the environment.
  """
  if distributed:
    jax.distributed.initialize()


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh over `devices` (default: all devices of all processes)."""
  devices = list(jax.devices() if devices is None else devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding that keeps a full copy on every device (the train state, metrics)."""
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Sharding that splits the leading axis over the 'data' axis (batches)."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch_size: int, mesh: Mesh, field: str = "train.batch_size"):
  """Raises ConfigError unless the global batch splits evenly over devices and processes."""
  n_dev, n_proc = mesh.devices.size, jax.process_count()
  if global_batch_size <= 0 or global_batch_size % n_dev or global_batch_size % n_proc:
    raise ConfigError(
        f"{field}={global_batch_size} must be a positive multiple of the number of devices "
        f"({n_dev}) and processes ({n_proc}); e.g. --config.{field}={max(n_dev, 1) * 8}.")


def process_local_batch_size(global_batch_size: int) -> int:
  """Examples each process loads per step."""
  return global_batch_size // jax.process_count()


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles process-local numpy arrays into global arrays sharded on the batch axis.

  Each process passes its own slice of the global batch (leading axis = global batch /
  process count); the result is one `jax.Array` per key spanning all processes. Non-numeric
  entries (file names, defect types) must be removed before calling.
  """
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}
