"""Errors a user can cause: each carries one message that names the field or file and the fix."""


class ConfigError(ValueError):
  """A configuration value is invalid; the message names the config field."""


class DataError(ValueError):
  """Input data is missing or malformed; the message names the path and the expected layout."""


class DistributedError(RuntimeError):
  """The multi-process runtime cannot start; the message names the coordinator address."""
