"""Property tests of the validators: whatever numbers, names and cut lists a config holds (NaN,
infinities, extremes, wrong types), validation either returns a config whose values are finite and in
range, or raises one ConfigError; never another exception, never a silently accepted NaN."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitpriv.attacks import build_attack
from splitpriv.defenses import DEFENSES, build_defense
from splitpriv.transforms import build_transform
from splitpriv import sweep
from splitpriv.config import RunConfig, from_dict, is_safe_name
from splitpriv.errors import ConfigError
from splitpriv.models import build_model
from splitpriv.planner import Scenario

numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**12, 10**12), st.booleans(),
                    st.none(), st.text(max_size=5))
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _finite(value) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


@PROPERTY
@given(name=st.text(max_size=30))
def test_an_accepted_run_name_stays_inside_its_output_folder(name):
    if is_safe_name(name):
        out = Path("/srv/runs")
        assert (out / name).resolve().parent == out and name not in (".", "..")


@PROPERTY
@given(key=st.sampled_from(["epochs", "batch_size", "num_threads"]), value=numbers)
def test_training_integers_are_in_range_or_refused(key, value):
    try:
        cfg = from_dict(RunConfig, {"training": {key: value}})
    except ConfigError:
        return
    accepted = getattr(cfg.training, key)
    assert accepted is None or (isinstance(accepted, int) and accepted >= 1)
    assert key != "epochs" or accepted <= 100_000


@PROPERTY
@given(section=st.sampled_from(["client_optimizer", "server_optimizer"]),
       key=st.sampled_from(["lr", "weight_decay", "momentum"]), value=numbers)
def test_optimizer_numbers_are_finite_and_in_range_or_refused(section, key, value):
    try:
        cfg = from_dict(RunConfig, {"training": {section: {key: value}}})
    except ConfigError:
        return
    accepted = getattr(getattr(cfg.training, section), key)
    assert _finite(accepted) and accepted >= 0 and (key != "lr" or accepted > 0)


@PROPERTY
@given(key=st.sampled_from(["val_fraction", "proxy_fraction", "train_size", "test_size", "proxy_size"]), value=numbers)
def test_data_settings_are_in_range_or_refused(key, value):
    try:
        cfg = from_dict(RunConfig, {"data": {key: value}})
    except ConfigError:
        return
    accepted = getattr(cfg.data, key)
    assert accepted is None or (_finite(accepted) and accepted >= 0)


DEFENSE_PARAMETERS = {
    "dp_noise": ["epsilon", "delta", "clip", "output_bound", "inference_releases", "accounting_delta", "noise_seed"],
    "dp_sgd": ["noise_multiplier", "target_epsilon", "max_grad_norm", "delta", "noise_seed"],
    "distance_correlation": ["weight"],
    "decoder_reconstruction": ["weight", "ssim_threshold", "max_task_loss", "decoder_lr"],
    "quantize": ["bits"], "topk": ["k"], "bottleneck": ["rate", "lr"],
}


@PROPERTY
@given(data=st.data())
def test_defense_parameters_are_finite_or_refused(data):
    name = data.draw(st.sampled_from(sorted(DEFENSE_PARAMETERS)))
    parameter = data.draw(st.sampled_from(DEFENSE_PARAMETERS[name]))
    value = data.draw(numbers)
    try:
        build = build_defense if name in DEFENSES else build_transform
        defense = build({"name": name, parameter: value})
    except ConfigError:
        return
    recorded = getattr(defense, parameter, value)
    recorded = recorded.item() if hasattr(recorded, "item") else recorded
    assert _finite(recorded) and recorded is not True


@PROPERTY
@given(name=st.sampled_from(["decoder_inversion", "noise_aware", "optimization_inversion"]),
       parameter=st.sampled_from(["lr", "max_epochs", "patience", "min_delta", "holdout_fraction", "tv_weight",
                                  "max_steps", "tolerance", "start"]), value=numbers)
def test_attack_parameters_are_finite_or_refused(name, parameter, value):
    try:
        build_attack({"name": name, parameter: value})
    except ConfigError:
        pass


@pytest.fixture(scope="module")
def small_cnn_cuts():
    return build_model("small_cnn", 10, 1, 8).cut_points((1, 8, 8))


@PROPERTY
@given(cuts=st.lists(st.one_of(numbers, st.sampled_from(["relu1", "pool", "nowhere", "3"])), max_size=4))
def test_a_sweep_grid_takes_only_real_cuts(cuts, small_cnn_cuts):
    try:
        cells = sweep.grid(sweep.load_sweep_config({"cuts": cuts, "defenses": [{"name": "none"}]}), small_cnn_cuts)
    except ConfigError:
        return
    assert cells and {cell.cut_layer for cell in cells} <= {point.index for point in small_cnn_cuts}


@PROPERTY
@given(key=st.sampled_from(["slo_s", "target_accuracy", "max_leakage_ssim", "min_reconstruction_mse", "max_cost_per_1000"]),
       value=numbers)
def test_planning_limits_are_finite_or_refused(key, value):
    try:
        scenario = from_dict(Scenario, {key: value})
    except ConfigError:
        return
    assert _finite(getattr(scenario, key))


@PROPERTY
@given(rates=st.lists(numbers, max_size=3))
def test_exit_rates_are_shares_or_refused(rates):
    from splitpriv.catalogue import load_catalogue

    try:
        from_dict(Scenario, {"exit_rates": rates}).options(load_catalogue())
    except ConfigError:
        return
    assert all(isinstance(r, (int, float)) and 0 <= r < 1 for r in rates)
