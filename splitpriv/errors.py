"""Errors a user can fix. The CLI prints their message and exits with code 2, no traceback."""


class SplitprivError(Exception):
    """A problem with the user's input (config, flags, files, data) that the message explains."""


class ConfigError(SplitprivError, ValueError):
    """An invalid configuration value; the message names the key, the value and what is allowed."""

    def __init__(self, key: str, value, allowed: str, problem: str = "invalid value for"):
        self.key, self.value, self.allowed, self.problem = key, value, allowed, problem
        super().__init__(f"{problem} '{key}': {value!r}; allowed: {allowed}")


class DataNotFoundError(SplitprivError, FileNotFoundError):
    """A data set is not where it was looked for."""


class DataFileError(SplitprivError):
    """A data file exists but cannot be used (truncated, wrong dtype or shape, bad labels); the message names it."""


class RunStateError(SplitprivError):
    """A run or sweep folder holds damaged or unsafe state (a corrupt config, an unreadable checkpoint)."""


class TrainingDiverged(SplitprivError):
    """The training loss became NaN or infinite (a learning rate or a defense too strong)."""


class SweepIncomplete(SplitprivError):
    """Some cells of a sweep failed; the others are in the frontier and a rerun retries the failed ones."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: the finished epochs are saved; the message says how to continue."""
