"""Every shipped YAML run config is valid (sweep and plan configs are checked by their own tests)."""
from pathlib import Path

import pytest

from splitpriv.config import load_run_config
from splitpriv.models import build_model

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
RUN_CONFIGS = sorted(p for p in EXPERIMENTS.glob("*.yaml") if not any(k in p.stem for k in ("sweep", "plan", "cost")))


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.name)
def test_run_config_is_valid(path):
    cfg = load_run_config(path)
    assert cfg.data.dataset and cfg.model.name
    if cfg.defenses:
        from splitpriv.defenses import build_defenses

        build_defenses(cfg.defenses)


def test_vgg_config_cut_exists():
    cfg = load_run_config(EXPERIMENTS / "cifar10_vgg16.yaml")
    assert build_model(cfg.model.name, 10, 3, 32).cut_name(cfg.model.cut_layer) == "features_9_pool"


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*_sweep.yaml")), ids=lambda p: p.name)
def test_sweep_config_is_valid_and_its_grid_is_not_empty(path):
    import yaml

    from splitpriv import sweep

    cfg = sweep.load_sweep_config(yaml.safe_load(path.read_text()))
    assert cfg.dataset and cfg.model


def test_the_default_sweep_is_the_shipped_digits_sweep_config():
    import yaml

    from splitpriv import sweep

    shipped = sweep.load_sweep_config(yaml.safe_load((EXPERIMENTS / "digits_sweep.yaml").read_text()))
    assert shipped == sweep.load_sweep_config({"name": shipped.name})


@pytest.mark.parametrize("path", sorted((EXPERIMENTS / "reproduce").glob("*.yaml")), ids=lambda p: p.name)
def test_reproduction_configs_are_valid_sweeps_with_at_least_three_seeds(path):
    import yaml

    from splitpriv import sweep
    from splitpriv.data import dataset_shape

    cfg = sweep.load_sweep_config(yaml.safe_load(path.read_text()))
    num_classes, shape = dataset_shape(cfg.dataset)
    cells = sweep.grid(cfg, build_model(cfg.model, num_classes, shape[0], shape[-1]).cut_points(shape))
    assert len(cfg.seeds) >= 3 and cells


def test_the_exits_cost_study_prices_the_shipped_exits_runs_classifiers():
    import yaml

    from splitpriv.config import from_dict
    from splitpriv.cost import CostStudy

    study = from_dict(CostStudy, yaml.safe_load((EXPERIMENTS / "cost_c6i_lambda_exits.yaml").read_text()))
    study.validate()
    run = load_run_config(EXPERIMENTS / "cifar10_vgg16_exits.yaml")
    assert Path(study.exits_run).name == run.run_name()
    assert (study.model, study.dataset) == (run.model.name, run.data.dataset)
    assert study.partition_after == run.exits.at
    assert set(run.exits.at) <= set(build_model(run.model.name, 10, 3, 32).block_names)
