"""Device mesh, shardings and multi-host helpers.

draem-jax is data-parallel with `jax.jit` over a 1-D mesh whose single axis, 'data', spans
every device of every process: the train state is replicated, batches are sharded on their
leading (batch) axis. XLA inserts the gradient all-reduce, and BatchNorm statistics are those
of the global batch, exactly as on one device.
"""

import os
import socket
import time
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from draem_jax.errors import ConfigError, DistributedError

DATA_AXIS = "data"


# Environment variables read when the config leaves a field unset (JAX itself reads
# JAX_COORDINATOR_ADDRESS; the other two are this project's, named alike).
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


class DistributedSetup(NamedTuple):
  """Arguments of `jax.distributed.initialize`; None = left to JAX's cluster auto-detection."""

  coordinator_address: str | None
  num_processes: int | None
  process_id: int | None
  initialization_timeout: int


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
  value = environ.get(name, "").strip()
  if not value:
    return None
  try:
    return int(value)
  except ValueError:
    raise ConfigError(f"environment variable {name}={value!r} must be an integer.") from None


def distributed_setup(train_config, environ: Mapping[str, str] | None = None
                      ) -> DistributedSetup:
  """Resolves the distributed start from the config, then the environment, then auto-detection.

  Precedence per value: the config field (train.coordinator_address, train.num_processes,
  train.process_id) if set, else JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID,
  else None, which lets JAX detect it (TPU VM pod slices, SLURM, Open MPI, Kubernetes). The
  three are resolved together: with an address given, a missing count or id comes from the
  cluster scheduler JAX detects (as under SLURM with JAX_COORDINATOR_ADDRESS exported), and
  without one an address alone is refused: no process would know it is process 0.

  Raises:
    ConfigError: a value is malformed (the message names the field or variable).
  """
  environ = os.environ if environ is None else environ
  address = str(train_config.get("coordinator_address", "") or "").strip()
  address = address or environ.get(ENV_COORDINATOR, "").strip() or None
  num = train_config.get("num_processes", 0)
  num = num if num and num > 0 else _env_int(environ, ENV_NUM_PROCESSES)
  pid = train_config.get("process_id", -1)
  pid = pid if pid is not None and pid >= 0 else _env_int(environ, ENV_PROCESS_ID)
  timeout = int(train_config.get("initialization_timeout", 300))
  if timeout <= 0:
    raise ConfigError(f"train.initialization_timeout={timeout} must be a positive number of "
                      "seconds.")
  if address is not None:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
      raise ConfigError(f"coordinator address {address!r} (train.coordinator_address or "
                        f"{ENV_COORDINATOR}) must be host:port, e.g. 10.0.0.2:1234.")
  if address is not None and (num is None or pid is None):
    # A coordinator named by hand inside a cluster job (SLURM, Open MPI, ...) that sets the
    # count and rank in its own variables: take them from there now, as JAX would, so that
    # process 0 knows it serves the coordinator (`check_coordinator`).
    detected = _cluster_process_count_and_id()
    if detected is not None:
      num = detected[0] if num is None else num
      pid = detected[1] if pid is None else pid
    if num is None or pid is None:
      raise ConfigError(
          f"coordinator address {address} is set (train.coordinator_address or "
          f"{ENV_COORDINATOR}) but the number of processes and this process's id are not, and "
          "no cluster scheduler that sets them was found: set train.num_processes and "
          f"train.process_id (or {ENV_NUM_PROCESSES} and {ENV_PROCESS_ID}) on every process, "
          "or leave the address unset to let JAX detect all three.")
  if num is not None and num < 1:
    raise ConfigError(f"number of processes {num} (train.num_processes or {ENV_NUM_PROCESSES}) "
                      "must be >= 1.")
  if num is not None and pid is not None and not 0 <= pid < num:
    raise ConfigError(f"process id {pid} (train.process_id or {ENV_PROCESS_ID}) must be in "
                      f"[0, {num}).")
  return DistributedSetup(address, num, pid, timeout)


def _cluster_process_count_and_id() -> tuple[int, int] | None:
  """(process count, process id) from the cluster scheduler JAX detects (SLURM's
  SLURM_NTASKS / SLURM_PROCID, Open MPI's, ...), or None outside such a job.

  Uses JAX's own cluster detection (`jax.distributed.initialize` fills unset values from it),
  so both agree on which process is 0.
  """
  try:
    from jax._src import clusters  # pylint: disable=g-import-not-at-top
    envs = [env for env in clusters.ClusterEnv._cluster_types  # pylint: disable=protected-access
            if not env.opt_in_only_method and env.is_env_present()]
    if not envs:
      return None
    return int(envs[0].get_process_count()), int(envs[0].get_process_id())
  except (ImportError, AttributeError):  # Another JAX release: JAX resolves them itself.
    return None


def _split_address(address: str) -> tuple[str, int]:
  host, _, port = address.rpartition(":")
  return host.strip("[]"), int(port)


def check_coordinator(setup: DistributedSetup, poll_seconds: float = 0.5) -> None:
  """Fails fast, with the address in the message, where JAX would abort the process.

  `jax.distributed.initialize` ends a process whose coordinator never answers with a C++
  check failure (SIGABRT) that names no address. So before it: process 0 checks that it can
  listen on the port; every other process waits, up to the initialization timeout, until a
  TCP connection to the coordinator succeeds (process 0 may start later than the others).

  Raises:
    DistributedError: unresolvable host, port in use on process 0, or no coordinator within
      `setup.initialization_timeout` seconds.
  """
  if setup.coordinator_address is None:
    return  # Auto-detected by JAX (TPU metadata, SLURM, ...): nothing to check here.
  address = setup.coordinator_address
  host, port = _split_address(address)
  try:
    socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
  except socket.gaierror as e:
    raise DistributedError(f"coordinator address {address}: host {host!r} does not resolve "
                           f"({e}); set train.coordinator_address or {ENV_COORDINATOR} to "
                           "process 0's host:port.") from None
  if setup.process_id == 0:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
      try:
        s.bind(("", port))
      except OSError as e:
        raise DistributedError(f"process 0 cannot serve the coordinator at {address}: port "
                               f"{port} is not free ({e}); choose another port.") from None
    return
  deadline = time.monotonic() + setup.initialization_timeout
  while True:
    try:
      with socket.create_connection((host, port), timeout=min(5.0, setup.initialization_timeout)):
        return
    except OSError as e:
      if time.monotonic() + poll_seconds >= deadline:
        raise DistributedError(
            f"could not reach the coordinator at {address} within "
            f"{setup.initialization_timeout} s ({e}): start process 0 with the same address, "
            "check the host, the port and the firewall, or raise "
            "train.initialization_timeout.") from None
      time.sleep(poll_seconds)


def maybe_initialize_distributed(train_config) -> None:
  """Starts the multi-process runtime (TPU pods, several GPU hosts, local CPU processes).

  Nothing happens unless train.distributed is True. Then the coordinator address, the number of
  processes and this process's id come from `distributed_setup` (config, environment, or JAX's
  auto-detection: on a TPU VM pod slice nothing needs to be set). CPU processes exchange their
  collectives over gloo. Must run before anything touches `jax.devices()`.

  Raises:
    ConfigError: malformed settings.
    DistributedError: the coordinator cannot be reached (see `check_coordinator`).
  """
  if not train_config.distributed:
    return
  if jax.distributed.is_initialized():
    return  # A second category of an `all` run, or a caller that started it already.
  setup = distributed_setup(train_config)
  if jax.config.jax_cpu_collectives_implementation in (None, "none"):
    # Older JAX releases default to no CPU collectives; cross-process CPU arrays need gloo.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  logging.info("Starting the distributed runtime: coordinator %s, process %s of %s, waiting up "
               "to %d s for every process.",
               setup.coordinator_address or "auto-detected", _or_auto(setup.process_id),
               _or_auto(setup.num_processes), setup.initialization_timeout)
  check_coordinator(setup)
  jax.distributed.initialize(coordinator_address=setup.coordinator_address,
                             num_processes=setup.num_processes, process_id=setup.process_id,
                             initialization_timeout=setup.initialization_timeout)
  logging.info("Distributed runtime up: process %d of %d, %d local devices.",
               jax.process_index(), jax.process_count(), jax.local_device_count())


def _or_auto(value) -> str:
  return "auto-detected" if value is None else str(value)


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
