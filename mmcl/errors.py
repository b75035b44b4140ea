"""The one-line errors mmcl raises for bad input (re-exported by :mod:`mmcl.config`, their usual name).

They sit below every other module (no import of mmcl's), so that :mod:`mmcl.kernels`, which
:mod:`mmcl` imports first, raises them without importing the configuration.
"""


class ConfigError(ValueError):
    """A profile, override or method hyper-parameter is invalid; the message names the key."""


class PreparedDataError(ValueError):
    """A prepared (real) dataset's file is unreadable; the message names the file and what to do."""
