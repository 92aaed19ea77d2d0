import numpy as np
import pytest

import hf_tune

pytestmark = pytest.mark.slow


def _tiny_run(tiny_npz, tmp_path, **extra) -> hf_tune.Run:
    return hf_tune.Run.from_recipe(
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
        **extra,
    )


def test_python_api_runs_a_recipe(tiny_npz, tmp_path):
    run = _tiny_run(tiny_npz, tmp_path)
    metrics = run.fit()
    assert "eval_accuracy" in metrics and run.model_dir == tmp_path / "run" / "model"
    assert (run.model_dir / "model.safetensors").is_file()
    assert "quickstart" in hf_tune.list_recipes()
    with pytest.raises(hf_tune.ConfigError, match="did you mean"):
        hf_tune.Run.from_recipe("quickstart", modle__name="x")


def test_run_load_evaluate_predict_show_push(tiny_npz, tmp_path, monkeypatch):
    from PIL import Image

    from .test_hub_report import FakeHub

    run = _tiny_run(tiny_npz, tmp_path, training__logging_steps=1)
    with pytest.raises(RuntimeError, match="fit"):
        run.predict(tmp_path)
    run.fit()
    again = hf_tune.Run.load(tmp_path / "run")
    assert again.model_dir == run.model_dir and again.metrics == run.metrics
    ev = again.evaluate(data_path=str(tmp_path / "tiny_test.npz"), data__split="test")
    assert ev["split"] == "test" and ev["num_examples"] == 16
    img = tmp_path / "one.png"
    Image.fromarray(np.load(tiny_npz)["val_images"][0]).save(img)
    (row,) = again.predict(img)
    assert row["label"] in ("0", "1") and 0 <= row["score"] <= 1
    names = {p.name for p in again.show()}  # outside IPython: just the paths
    assert {"training_curves.png", "confusion_val.png", "roc_pr_val.png"} <= names
    hub = FakeHub(tmp_path / "hub")
    hub.install(monkeypatch)
    assert again.push("me/q").endswith("me/q") and hub.repos["me/q"]["private"] is True
    assert (tmp_path / "hub" / "me" / "q" / "model.safetensors").is_file()
