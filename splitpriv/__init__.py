"""splitpriv: privacy-aware split learning over edge and cloud.

Python API with the same words as the CLI::

    import splitpriv
    run = splitpriv.train(splitpriv.RunConfig())      # digits, small_cnn, a middle cut
    run = splitpriv.load_run("runs/digits-small_cnn-cut4-seed0")
"""
from splitpriv.config import RunConfig, load_run_config
from splitpriv.cuda_probe import drop_failing_nvml_check
from splitpriv.data import make_splits, register_dataset
from splitpriv.errors import ConfigError, SplitprivError
from splitpriv.experiment import train
from splitpriv.models import SplitModel, build_model, register_model
from splitpriv.runs import Run, load_run

drop_failing_nvml_check()  # Lightning (imported above by experiment) set it

__all__ = [
    "RunConfig", "load_run_config", "make_splits", "register_dataset", "ConfigError", "SplitprivError",
    "train", "SplitModel", "build_model", "register_model", "Run", "load_run",
]
