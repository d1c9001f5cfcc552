"""The sweep's error, below both the sweep file's loader and the trial pipeline that checks it."""

from scaling.config_dialect import ConfigError


class SweepError(ConfigError):
    """A sweep file (or a ``key=value`` on the command line) is wrong; the message says where."""
