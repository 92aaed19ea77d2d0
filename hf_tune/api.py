"""The notebook API: one object per run, with the CLI's verbs as methods.

    run = hf_tune.Run.from_recipe("quickstart", training__num_train_epochs=1)
    run.fit()                      # train, evaluate, save model/ with report and model card
    run.evaluate(data_path="...")  # like `hf-tune evaluate`
    run.predict("image_or_folder") # like `hf-tune predict`, a list of dicts
    run.show()                     # plots inline in Jupyter (paths elsewhere)
    run.push("me/my-model")        # like `hf-tune push`, private by default
    run.lr_find(steps=100)         # like `hf-tune lr-find`
    hf_tune.search("my_search.yaml", search__n_trials=8)   # like `hf-tune search`

``Run.load(run_dir)`` reopens a finished run for evaluate/predict/show/push. In Jupyter, Trainer shows its
own notebook progress bars; everything hf_tune logs goes to stderr, as on the command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hf_tune.config import find_model_dir, load_config, load_run_config
from hf_tune.schema import BaseConfig


class Run:
    """One training run: ``Run(cfg).fit()`` or ``Run.from_recipe("quickstart", **overrides).fit()``."""

    def __init__(self, cfg: BaseConfig) -> None:
        from hf_tune.recipes import RECIPES

        self.cfg = cfg
        self.recipe = RECIPES.get(cfg.task)(cfg)
        self.metrics: dict[str, Any] = {}
        self.model_dir: Path | None = None

    @classmethod
    def from_recipe(cls, name: str, **overrides: Any) -> Run:
        """Keyword overrides use double underscores for dots: ``training__learning_rate=1e-3``."""
        return cls(load_config([f"recipe={name}", *_overrides(overrides)]))

    @classmethod
    def load(cls, run_dir: str | Path) -> Run:
        """A finished run (its folder or its model/ folder), ready for evaluate/predict/show/push."""
        model_dir = find_model_dir(run_dir)
        run = cls(load_run_config(model_dir))
        run.model_dir = model_dir
        metrics = model_dir / "metrics.json"
        if metrics.is_file():
            import json

            run.metrics = json.loads(metrics.read_text())
        return run

    def fit(self) -> dict[str, Any]:
        """Train, evaluate and save (model, report, card), pushing when the recipe asks; returns the metrics."""
        from hf_tune.recipes import run_training

        result = run_training(self.recipe)
        self.metrics, self.model_dir = result.metrics, result.model_dir
        return self.metrics

    # ---------------------------------------------------------------- after training
    def _fresh_recipe(self, overrides: list[str], task: str | None):
        from hf_tune.recipes import RECIPES

        cfg = load_run_config(self._require_model(), overrides, task)
        return RECIPES.get(cfg.task)(cfg)

    def _require_model(self) -> Path:
        if self.model_dir is None:
            raise RuntimeError("no trained model yet: call fit() first, or Run.load(run_dir)")
        return self.model_dir

    def evaluate(self, data_path: str | None = None, task: str | None = None, **overrides: Any) -> dict[str, Any]:
        """Metrics of the saved model on ``data_path`` (default: the training config's data and split)."""
        args = _overrides(overrides) + ([f"data.path={data_path}"] if data_path else [])
        kwargs = {"task": task} if task else {}
        return self._fresh_recipe(args, task).evaluate_saved(self._require_model(), **kwargs)

    def predict(self, inputs: str | Path, task: str | None = None, batch_size: int = 32) -> list[dict[str, Any]]:
        """Predictions for a file or folder (images, .txt documents, .jsonl), as ``hf-tune predict`` writes."""
        if not Path(inputs).exists():
            raise FileNotFoundError(f"{inputs}: input file or folder not found")
        kwargs = {"task": task} if task else {}
        recipe = self._fresh_recipe([], task)
        return list(recipe.predict(self._require_model(), str(inputs), batch_size=batch_size, **kwargs))

    def report(self) -> Path:
        """(Re)write plots, report.md and the model card; returns report.md."""
        from hf_tune.hub import write_model_card
        from hf_tune.report import write_report

        model_dir = self._require_model()
        path = write_report(model_dir, title=self.cfg.recipe or self.cfg.task)
        write_model_card(self.cfg, model_dir, self.metrics)
        return path

    def plots(self) -> list[Path]:
        from hf_tune.report import PLOTS_DIR

        folder = self._require_model() / PLOTS_DIR
        if not folder.is_dir():
            self.report()
        return sorted(folder.glob("*.png"))

    def show(self) -> list[Path]:
        """Display the run's plots inline when running under IPython/Jupyter; returns their paths."""
        paths = self.plots()
        try:
            from IPython import get_ipython
            from IPython.display import Image, Markdown, display
        except ImportError:
            return paths
        if get_ipython() is not None:
            for p in paths:
                display(Markdown(f"**{p.stem.replace('_', ' ')}**"), Image(filename=str(p)))
        return paths

    def push(self, repo_id: str, private: bool = True, token: str | None = None) -> str:
        """Upload the model folder (weights, config, processor/tokenizer, card, recipe, plots) to the Hub."""
        from hf_tune.hub import push_model

        return push_model(self._require_model(), repo_id, self.cfg, private=private, token=token)

    def lr_find(self, **options: Any) -> dict[str, Any]:
        """Learning-rate range test on this run's recipe, like ``hf-tune lr-find`` (options: output, start_lr,
        end_lr, steps, smooth, diverge); writes into its own folder, never into the run's."""
        from hf_tune.lr_find import lr_find

        return lr_find(self.cfg, **options)


def search(recipe: str | Path, space: dict[str, dict[str, Any]] | None = None, **overrides: Any) -> dict[str, Any]:
    """``hf-tune search``: the recipe's ``search:`` section (``space`` adds or replaces entries, keyed by dotted
    recipe keys), keyword overrides as for ``Run.from_recipe`` (``search__n_trials=8``); returns the summary."""
    import json

    from hf_tune.search_study import run_search

    entries = [f"search.space[{k}]={json.dumps(v)}" for k, v in (space or {}).items()]
    return run_search([f"recipe={recipe}", *_overrides(overrides), *entries])


def _overrides(kw: dict[str, Any]) -> list[str]:
    return [f"{k.replace('__', '.')}={_yaml_value(v)}" for k, v in kw.items()]


def _yaml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_yaml_value(x) for x in v) + "]"
    return str(v)
