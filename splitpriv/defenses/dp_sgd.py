"""DP-SGD on the client partition with Opacus (Abadi et al., CCS 2016).

Only the client's parameters - the part trained on the private data's device - are made private;
the server trains normally (the pattern Opacus' maintainers give in opacus#615). Each step::

    g_i   = grad_client l(x_i)                        per-sample gradients (GradSampleModule)
    g_i'  = g_i / max(1, ||g_i||_2 / C)               C = ``max_grad_norm``
    g     = (sum_i g_i' + N(0, sigma^2 C^2 I)) / B    sigma = ``noise_multiplier``, B the expected batch size

on Poisson-sampled batches (sample rate q = batch_size / N), so that the accountant's analysis
holds; after T steps the accountant (``rdp`` or ``prv``) gives the spent epsilon for
``delta``. With ``target_epsilon``, sigma is the smallest Opacus finds to spend at most that
budget over the configured epochs. The noise and the Poisson sampling draw from the defense's own
generator (operating-system entropy unless ``noise_seed`` fixes it for an experiment).

Per-sample gradients cross the cut: the server returns dL/dz_i = (1/B) dl_i/dz_i for the mean
loss L; the client back-propagates ``<z, dL/dz>``, and Opacus (``loss_reduction="mean"``) scales
the per-sample gradients by B back to dl_i/dtheta before clipping. Clipping bounds g_i only if
dl_i/dz_i depends on sample i alone, so BatchNorm, which mixes the samples of a batch, is replaced
by GroupNorm in the client *and* in the server (``ModuleValidator.fix``), and in-place
activations in the client become out-of-place (Opacus' backward hooks forbid in-place updates
of a hooked layer's output).

**What is guaranteed, exactly.** The sequence of client parameters is (epsilon, delta)-DP with
respect to one private training sample *if* every gradient the server returns for a sample is a
function of that sample's message and label and of state that is independent of the sample. That
assumption is the protocol's weak point: the server's weights are trained, without privacy, on
the raw messages of earlier steps - the sample's own included - and every later returned gradient
depends on them. So the guarantee covers an observer of the client's parameters alone (e.g.
whoever receives the trained client) under that assumption; it says nothing against the server,
which sees every message in the clear (add ``dp_noise`` to protect messages). It never trains
silently without privacy (opacus#313): sigma must be > 0, and defenses whose loss couples the
samples of a batch are refused (their gradient has no per-sample bound).
"""
from __future__ import annotations

import functools
import logging
import math

import torch
from opacus import GradSampleModule
from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.data_loader import DPDataLoader
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator

from splitpriv.cut import ClientLossTerm, TrainingPrivatizer, is_number, private_generator
from splitpriv.defenses.accounting import refuse_delta_above_one_in_n
from splitpriv.defenses.base import Defense, register_defense
from splitpriv.errors import ConfigError, SplitprivError

log = logging.getLogger("splitpriv")
# not Opacus' "gdp": its central-limit approximation can understate epsilon (Opacus warns so), not a bound
ACCOUNTANTS = ("rdp", "prv")
MIN_NOISE_MULTIPLIER = 0.1  # about 1e4 spent epsilon already for 1,000 steps at q = 0.03 (RDP)


# Both are pure functions of their arguments, and slow (an RDP accountant evaluates a series per
# order, at every epoch end); every cut of a sweep, and every rehearsal of splitpriv predict, asks a
# worker process for the same values again.
@functools.lru_cache(maxsize=1024)
def accounted_epsilon(accountant: str, history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    """The epsilon that ``accountant`` spends over ``history`` ((noise multiplier, sample rate, steps), ...)."""
    ledger = create_accountant(accountant)
    ledger.history = [tuple(entry) for entry in history]
    return ledger.get_epsilon(delta=delta)


@functools.lru_cache(maxsize=64)
def noise_multiplier_for(target_epsilon: float, delta: float, sample_rate: float, epochs: int, accountant: str) -> float:
    """Opacus' smallest sigma that spends at most ``target_epsilon`` (its ValueError when none does)."""
    return get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
                                epochs=epochs, accountant=accountant)


@register_defense
class DPSGD(Defense, TrainingPrivatizer):
    """Opacus DP-SGD for the client's optimizer; spent epsilon in the metrics every epoch.

    Args:
        noise_multiplier: sigma > 0 (noise std / ``max_grad_norm``); default 1.0 unless ``target_epsilon``.
        target_epsilon: spend at most this epsilon over the run's epochs (sigma computed by Opacus).
        max_grad_norm: the per-sample gradient clipping norm C > 0.
        delta: in (0, 1), e.g. below 1 / (number of private training samples).
        accountant: ``rdp`` (default) or ``prv``.
        noise_seed: None (operating-system entropy) or a seed for a reproducible experiment.
    """

    name = "dp_sgd"
    parameter_units = {"target_epsilon": "per sample, whole training", "noise_multiplier": "sigma / C",
                       "max_grad_norm": "C"}
    parameter_help = {"noise_multiplier": "noise std / max grad norm, > 0",
                      "target_epsilon": "spend at most this epsilon (instead of --noise-multiplier)",
                      "max_grad_norm": "per-sample gradient clipping norm", "delta": "delta per sample in (0, 1)",
                      "accountant": "rdp or prv",
                      "noise_seed": "fix the noise and sampling generator (reproducible runs only)"}
    poisson_sampling = True  # DPDataLoader (train_loader)
    precisions = ("32-true",)  # Opacus' per-sample gradients are float32: autocast's bfloat16 ones are refused

    def __init__(self, noise_multiplier: float | None = None, target_epsilon: float | None = None,
                 max_grad_norm: float = 1.0, delta: float = 1e-5, accountant: str = "rdp", noise_seed: int | None = None):
        super().__init__()
        if noise_multiplier is not None and target_epsilon is not None:
            raise ConfigError("target_epsilon", target_epsilon, "null when noise_multiplier is given (give one of the two)")
        if noise_multiplier is not None and (not is_number(noise_multiplier) or noise_multiplier < MIN_NOISE_MULTIPLIER):
            raise ConfigError("noise_multiplier", noise_multiplier, f"a finite number >= {MIN_NOISE_MULTIPLIER} (0 trains "
                              f"without privacy; below {MIN_NOISE_MULTIPLIER} the accountants certify no meaningful epsilon)")
        if target_epsilon is not None and (not is_number(target_epsilon) or not 0 < target_epsilon < math.inf):
            raise ConfigError("target_epsilon", target_epsilon, "a finite number > 0")
        if not is_number(max_grad_norm) or not 0 < max_grad_norm < math.inf:
            raise ConfigError("max_grad_norm", max_grad_norm, "a finite number > 0 (the per-sample clipping norm C)")
        if not is_number(delta) or not 0 < delta < 1:
            raise ConfigError("delta", delta, "a number in (0, 1), below 1 / (private training samples)")
        if accountant not in ACCOUNTANTS:
            raise ConfigError("accountant", accountant, f"one of {list(ACCOUNTANTS)} (Opacus' gdp is an approximation that "
                              f"can understate epsilon, so it is not offered)")
        if noise_seed is not None and (not isinstance(noise_seed, int) or isinstance(noise_seed, bool) or noise_seed < 0):
            raise ConfigError("noise_seed", noise_seed, "null (operating-system entropy) or an integer >= 0")
        self.noise_multiplier = None if target_epsilon is not None else float(noise_multiplier or 1.0)
        self.target_epsilon, self.max_grad_norm, self.delta = target_epsilon, float(max_grad_norm), float(delta)
        self.accountant_name = accountant
        self.accountant = create_accountant(accountant)
        self.sample_rate: float | None = None
        self.expected_batch_size: int | None = None
        self.budgeted_for: list | None = None  # [epochs, sample rate] sigma was chosen for, with target_epsilon
        self.noise_seed = noise_seed
        self.generator = private_generator(noise_seed)

    def rehearsal_spec(self, spec: dict, private_samples: int, batch_size: int, epochs: int) -> dict:
        """With ``target_epsilon``, sigma follows from the number of epochs: a shorter rehearsal would get
        less noise. This spec fixes sigma at the private run's (q = 1 / ceil(N / B), its epochs)."""
        if self.target_epsilon is None:
            return spec
        sigma = noise_multiplier_for(self.target_epsilon, self.delta, 1 / math.ceil(private_samples / batch_size), epochs,
                                     self.accountant_name)
        return {**{k: v for k, v in spec.items() if k != "target_epsilon"}, "noise_multiplier": sigma}

    # ------------------------------------------------------------------ before training
    def build(self, module, input_shape) -> None:
        """Make every per-sample gradient depend on its own sample only: BatchNorm becomes GroupNorm
        in the client and in the server (the server's returned gradient for sample i would otherwise
        depend on the whole batch), and the client's in-place activations become out-of-place."""
        for part in ("client", "server"):
            fixed = self._batch_independent(getattr(module, part), part)
            if fixed is not getattr(module, part):
                setattr(module, part, fixed)
                for name, block in fixed.named_children():  # the model keeps sharing the parts' blocks
                    setattr(module.model.blocks, name, block)
        for layer in module.client.modules():
            if getattr(layer, "inplace", False):
                layer.inplace = False

    @staticmethod
    def _batch_independent(part: torch.nn.Module, name: str) -> torch.nn.Module:
        if ModuleValidator.is_valid(part):
            return part
        fixed = ModuleValidator.fix(part)
        problems = ModuleValidator.validate(fixed, strict=False)
        if problems:
            raise SplitprivError(f"dp_sgd: the {name} part cannot give per-sample gradients: {problems}; "
                                 f"choose another cut or model")
        log.info("dp_sgd: BatchNorm in the %s replaced by GroupNorm (opacus ModuleValidator.fix)", name)
        return fixed

    def setup(self, module, private_train) -> None:
        refuse_delta_above_one_in_n("delta", self.delta, len(private_train))
        coupled = [term.name for term in module.playing(ClientLossTerm)]
        if coupled:
            raise ConfigError("defenses", coupled, "no defense with a client loss term next to dp_sgd: those terms "
                              "couple the samples of a batch, so per-sample clipping would not bound them")
        if len(module.client_exits):
            raise ConfigError("exits.at", list(module.client_exits), "no early exit in the client next to dp_sgd "
                              "(per-sample gradients cover the client's blocks only): exits after the cut")

    def train_loader(self, loader: torch.utils.data.DataLoader) -> torch.utils.data.DataLoader:
        """Poisson sampling with rate q = 1 / len(loader), which the accountants assume."""
        self.sample_rate, self.expected_batch_size = 1 / len(loader), loader.batch_size
        return DPDataLoader.from_data_loader(loader, generator=self.generator)

    def configure_client(self, module, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        if self.sample_rate is None:
            raise RuntimeError("dp_sgd: train_loader() must wrap the private training loader before training")
        self._check_budget_plan(module)
        # hooks on the client's layers record per-sample gradients; the client itself is not replaced,
        # so its state dict and the model's stay as they are
        object.__setattr__(self, "_grad_sample_module", GradSampleModule(module.client, batch_first=True, loss_reduction="mean"))
        if self.noise_multiplier is None:
            try:
                self.noise_multiplier = noise_multiplier_for(self.target_epsilon, self.delta, self.sample_rate,
                                                             module.trainer.max_epochs, self.accountant_name)
            except ValueError as error:  # Opacus: "The privacy budget is too low."
                raise ConfigError("target_epsilon", self.target_epsilon,
                                  f"a budget Opacus can reach in {module.trainer.max_epochs} epochs at sample rate "
                                  f"{self.sample_rate:.3g} and delta {self.delta:g} ({error}); raise it, or train fewer "
                                  f"epochs or with smaller batches") from None
            self.budgeted_for = [module.trainer.max_epochs, self.sample_rate]
        dp_optimizer = DPOptimizer(optimizer, noise_multiplier=self.noise_multiplier, max_grad_norm=self.max_grad_norm,
                                   expected_batch_size=self.expected_batch_size, loss_reduction="mean",
                                   generator=self.generator)
        dp_optimizer.attach_step_hook(self.accountant.get_optimizer_hook_fn(sample_rate=self.sample_rate))
        return dp_optimizer

    def _check_budget_plan(self, module) -> None:
        """A resumed run keeps the sigma its checkpoint chose for ``target_epsilon`` over the epochs and
        sample rate it started with; with more epochs or another batch size it would spend more."""
        if self.target_epsilon is None or self.budgeted_for is None:
            return
        planned_epochs, planned_rate, epochs = *self.budgeted_for, module.trainer.max_epochs
        if epochs != planned_epochs or not math.isclose(self.sample_rate, planned_rate):
            raise ConfigError("training.epochs", epochs, f"{planned_epochs} epochs of {round(1 / planned_rate)} steps (the "
                              f"same batch size), as when this run started: dp_sgd chose its "
                              f"noise to spend target_epsilon {self.target_epsilon:g} over those; train a new run "
                              f"(another --name) for a different schedule")

    def teardown(self, module) -> None:
        """Remove Opacus' hooks: the trained client is then an ordinary module (attacks, inference)."""
        hooks = self.__dict__.pop("_grad_sample_module", None)
        if hooks is not None:
            hooks.cleanup()

    # ------------------------------------------------------------------ accounting
    @property
    def steps(self) -> int:
        return sum(steps for _, _, steps in self.accountant.history)

    def spent_epsilon(self) -> float:
        history = tuple(tuple(entry) for entry in self.accountant.history)
        return accounted_epsilon(self.accountant_name, history, self.delta) if history else 0.0

    def metrics(self) -> dict[str, float]:
        return {"epsilon_per_sample": self.spent_epsilon(), "delta_per_sample": self.delta, "steps": float(self.steps),
                "noise_multiplier": float(self.noise_multiplier or float("nan"))}

    def config(self) -> dict:
        return {"noise_multiplier": self.noise_multiplier, "target_epsilon": self.target_epsilon,
                "max_grad_norm": self.max_grad_norm, "delta": self.delta, "accountant": self.accountant_name,
                "sample_rate": self.sample_rate, "poisson_sampling": True,
                "noise_source": "operating-system entropy" if self.noise_seed is None else "fixed seed (experiment only)"}

    # the accountant's history travels in checkpoints: load_run and --resume keep the spent epsilon
    # (and, when a seed fixed it, the generator's state, so that a resumed experiment continues its draws)
    def get_extra_state(self):
        state = {"history": [list(entry) for entry in self.accountant.history], "noise_multiplier": self.noise_multiplier,
                 "budgeted_for": self.budgeted_for}
        if self.noise_seed is not None:
            state["generator"] = self.generator.get_state()
        return state

    def set_extra_state(self, state) -> None:
        self.accountant.history = [tuple(entry) for entry in state["history"]]
        self.noise_multiplier = state["noise_multiplier"]
        self.budgeted_for = state.get("budgeted_for")
        if "generator" in state and self.noise_seed is not None:
            self.generator.set_state(state["generator"])
