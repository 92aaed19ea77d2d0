from pathlib import Path

import pytest
import yaml

from hf_tune.config import available_recipes, load_config, load_saved_config
from hf_tune.errors import ConfigError
from hf_tune.recipes import RECIPES
from hf_tune.recipes.image_classification import ImageClassificationConfig
from hf_tune.schema import launch_errors, save_config

from .conftest import RECIPES as RECIPE_FILES


@pytest.mark.parametrize("path", RECIPE_FILES, ids=lambda p: p.stem)
def test_every_shipped_recipe_validates(path: Path):
    cfg = load_config([f"recipe={path.stem}"])
    assert cfg.recipe == path.stem
    assert cfg.task in RECIPES.names()
    assert cfg.description, "every recipe needs a one-line description for `hf-tune recipes`"
    first = path.read_text().splitlines()[0]
    assert first.startswith("# Launch:"), "each YAML starts with its launch command"


def test_every_recipe_kind_declares_its_schema_and_spec():
    for name in RECIPES.names():
        assert RECIPES.get(name).config_cls.spec.name == name


def test_recipe_by_path_and_override_precedence(tmp_path: Path):
    p = tmp_path / "mine.yaml"
    p.write_text(
        yaml.safe_dump(
            {
                "task": "image_classification",
                "description": "x",
                "model": {"image_size": 48},
                "training": {"learning_rate": 0.1},
            }
        )
    )
    cfg = load_config([f"recipe={p}", "training.learning_rate=3e-4"])
    assert isinstance(cfg, ImageClassificationConfig)
    assert cfg.training["learning_rate"] == pytest.approx(3e-4)  # override beats YAML
    assert cfg.model.image_size == 48  # YAML beats schema default
    assert cfg.model.name == "resnet18"  # schema default


def test_base_recipe_inheritance():
    cfg = load_config(["recipe=pneumonia_resnet50"])
    assert cfg.model.name == "resnet50" and cfg.model.pretrained
    assert cfg.data.labels == ["normal", "pneumonia"]  # inherited from pneumonia_resnet18


def test_all_errors_reported_at_once_with_did_you_mean():
    with pytest.raises(ConfigError) as exc:
        load_config(
            [
                "recipe=quickstart",
                "model.nmae=resnet50",
                "training.learning_rat=1",
                "model.image_size=big",
                "training.warmup_ratio=0.1",
                "training.num_train_epochs=abc",
            ]
        )
    msg = str(exc.value)
    assert "5 problem(s)" in msg
    assert 'model.nmae: unknown key (did you mean "name"?)' in msg
    assert 'training.learning_rat: not a TrainingArguments field (did you mean "learning_rate"?)' in msg
    assert "model.image_size: expected an integer, got 'big'" in msg
    assert "training.warmup_ratio: removed in transformers 5" in msg
    assert "training.num_train_epochs: expected a number" in msg


def test_unknown_recipe_lists_available():
    with pytest.raises(ConfigError, match="available: .*quickstart") as exc:
        load_config(["recipe=quikstart"])
    assert 'did you mean "quickstart"' in str(exc.value)


def test_conflicting_settings_rejected():
    with pytest.raises(ConfigError, match="resume=true and overwrite=true conflict"):
        load_config(["recipe=quickstart", "resume=true", "overwrite=true"])
    with pytest.raises(ConfigError, match="bf16 and training.fp16"):
        load_config(["recipe=quickstart", "training.bf16=true", "training.fp16=true"])
    with pytest.raises(ConfigError, match="split_ratios"):
        load_config(["recipe=quickstart", "data.split_ratios=[0.5,0.1,0.1]"])


def test_mixed_precision_owned_by_recipe_checked_at_launch_only(monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    cfg = load_config(["recipe=quickstart"])  # a saved config validates whatever the environment
    assert any("precision is owned by the recipe" in e for e in launch_errors(cfg))
    assert launch_errors(cfg, env={}) == []


def test_yaml_no_means_string_for_strategies():
    cfg = load_config(["recipe=quickstart", "training.eval_strategy=no", "training.save_strategy=no"])
    assert cfg.training["eval_strategy"] == "no"


def test_bad_argument_shape():
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(["recipe=quickstart", "learning_rate"])


def test_resolved_config_round_trips(tmp_path: Path):
    cfg = load_config(["recipe=quickstart", "training.learning_rate=0.5"])
    save_config(cfg, tmp_path)
    again = load_saved_config(tmp_path / "resolved_config.yaml", ["data.split=test"])
    assert again.training["learning_rate"] == 0.5
    assert again.data.split == "test"
    assert again.recipe == "quickstart"


def test_available_recipes_contains_shipped():
    assert {"quickstart", "pneumonia_resnet18", "pneumonia_resnet50"} <= set(available_recipes())


def test_structural_and_semantic_errors_come_back_together():
    with pytest.raises(ConfigError) as exc:
        load_config(["recipe=quickstart", "model.nmae=x", "model.image_size=big", "resume=true", "overwrite=true"])
    msg = str(exc.value)
    assert "3 problem(s)" in msg
    assert 'model.nmae: unknown key (did you mean "name"?)' in msg and "resume=true and overwrite=true" in msg
