"""Errors a user can fix. The CLI prints their message and exits with code 2, no traceback."""


class SplitprivError(Exception):
    """A problem with the user's input (config, flags, files, data) that the message explains."""


class ConfigError(SplitprivError, ValueError):
    """An invalid configuration value; the message names the key, the value and what is allowed."""

    def __init__(self, key: str, value, allowed: str, problem: str = "invalid value for"):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{problem} '{key}': {value!r}; allowed: {allowed}")


class DataNotFoundError(SplitprivError, FileNotFoundError):
    """A data set is not where it was looked for."""
