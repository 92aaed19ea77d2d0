"""hf_tune: fine-tuning recipes for pretrained encoders on the Hugging Face stack.

Public Python API (the CLI is built on the same pieces)::

    import hf_tune
    cfg = hf_tune.load_config(["recipe=quickstart", "training.num_train_epochs=1"])
    run = hf_tune.Run(cfg)          # a recipe through its life cycle
    metrics = run.fit()             # setup -> train -> evaluate -> save; returns the metrics
    run.model_dir                   # the saved model folder (loads with transformers' pipeline)
    run.evaluate(data_path=...), run.predict(path), run.show(), run.push("me/model")
    hf_tune.Run.load("runs/quickstart")   # reopen a finished run
    run.lr_find(steps=100)          # learning-rate range test (hf-tune lr-find)
    hf_tune.search("my_search.yaml", search__n_trials=8)   # hyperparameter search (hf-tune search)
    hf_tune.MultiHeadModel.from_pretrained(folder)   # a multi-task model, no training code needed
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["ConfigError", "DataError", "MultiHeadModel", "Run", "list_recipes", "load_config", "search"]


def __getattr__(name: str) -> Any:
    # Lazy imports keep `import hf_tune` light (no torch/transformers until something is used).
    if name == "load_config":
        from hf_tune.config import load_config

        return load_config
    if name in ("ConfigError", "DataError"):
        from hf_tune import errors

        return getattr(errors, name)
    if name == "Run":
        from hf_tune.api import Run

        return Run
    if name == "search":
        from hf_tune.api import search

        return search
    if name == "MultiHeadModel":
        from hf_tune.multihead import MultiHeadModel

        return MultiHeadModel
    if name == "list_recipes":
        from hf_tune.config import available_recipes

        return available_recipes
    raise AttributeError(name)
