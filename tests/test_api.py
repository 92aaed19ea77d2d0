import pytest

import hf_tune

pytestmark = pytest.mark.slow


def test_python_api_runs_a_recipe(tiny_npz, tmp_path):
    run = hf_tune.Run.from_recipe(
        "quickstart",
        data__path=str(tiny_npz),
        data__format="auto",
        model__name="test_resnet",
        model__image_size=32,
        training__output_dir=str(tmp_path / "run"),
        training__max_steps=2,
        training__eval_strategy="no",
        training__save_strategy="no",
        training__disable_tqdm=True,
    )
    metrics = run.fit()
    assert "eval_accuracy" in metrics and run.model_dir == tmp_path / "run" / "model"
    assert (run.model_dir / "model.safetensors").is_file()
    assert "quickstart" in hf_tune.list_recipes()
    with pytest.raises(hf_tune.ConfigError, match="did you mean"):
        hf_tune.Run.from_recipe("quickstart", modle__name="x")
