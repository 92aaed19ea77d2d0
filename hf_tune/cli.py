"""``hf-tune`` command line: train, recipes, evaluate, predict.

    hf-tune train recipe=NAME key=value ... [--dry-run] [--help]
    hf-tune show recipe=NAME [key=value ...]
    hf-tune recipes
    hf-tune evaluate RUN_OR_MODEL_DIR data.path=FILE [data.split=test] [output=FILE] [task=NAME]
    hf-tune predict MODEL_DIR INPUT [output=FILE] [batch_size=N] [task=NAME]
    hf-tune report RUN_OR_MODEL_DIR
    hf-tune search recipe=FILE.yaml [key=value ...]       (a recipe with a search: section)
    hf-tune lr-find recipe=NAME [key=value ...] [output=DIR start_lr=1e-7 end_lr=10 steps=100]
    hf-tune push RUN_OR_MODEL_DIR REPO_ID [--public]
    hf-tune soup RUN_A RUN_B ... [method=greedy|uniform] [metric=M] [data.path=FILE] output=DIR
    hf-tune average RUN last=K|top=K [metric=eval_loss] output=DIR     (a run's checkpoints)
    hf-tune interpolate RUN [alpha=0.5|sweep] [base=RUN_OR_MODEL] [data.path=FILE] output=DIR   (WiSE-FT)

For multi-task models ``task=NAME`` picks one task (default: all), and ``data.KEY=VALUE`` applies to every
task's data (``tasks.NAME.data.KEY=VALUE`` to one).

Errors in the user's input (config, data, output dir) print one clear message and exit with code 2,
without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

from hf_tune.config import (
    available_recipes,
    find_model_dir,
    load_config,
    load_recipe_yaml,
    load_run_config,
    load_saved_config,
)
from hf_tune.errors import ConfigError, DataError, Interrupted, RunError
from hf_tune.hub import HubError
from hf_tune.modeling import ModelLoadError
from hf_tune.recipes import RECIPES, plan_training, run_training
from hf_tune.registry import Registry, RegistryError
from hf_tune.schema import RESOLVED_CONFIG_NAME
from hf_tune.techniques import log

USER_ERRORS = (ConfigError, DataError, ModelLoadError, RegistryError, FileNotFoundError, HubError)
COMMANDS: Registry[Callable[[argparse.Namespace], int]] = Registry("command")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # every hf-tune flag is a switch, so flags may stand anywhere: `train --dry-run recipe=x a=1` works too
    # (argparse would stop collecting the key=value list at the first flag)
    args = _parser().parse_args(
        argv[:1] + [a for a in argv[1:] if not a.startswith("-")] + [a for a in argv[1:] if a.startswith("-")]
    )
    try:
        return COMMANDS.get(args.command)(args)
    except USER_ERRORS as exc:
        print(f"hf-tune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except RunError as exc:
        print(f"hf-tune {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except Interrupted as exc:
        print(f"hf-tune {args.command}: {exc}: hf-tune {' '.join(argv)} resume=true", file=sys.stderr)
        return 130 if exc.signal_name == "SIGINT" else 143


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hf-tune", description="Fine-tune pretrained encoders with recipes.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a recipe: recipe=NAME key=value ...", add_help=False)
    t.add_argument("overrides", nargs="*", help="recipe=NAME and dotted key=value overrides")
    t.add_argument("--dry-run", action="store_true", help="check config and data, print the plan, train nothing")
    t.add_argument("-h", "--help", action="store_true", help="with recipe=NAME: every key, its value and meaning")
    s = sub.add_parser("show", help="every key of a recipe with its current value and what it means")
    s.add_argument("overrides", nargs="*", help="recipe=NAME and dotted key=value overrides")
    sub.add_parser("recipes", help="list the shipped recipes")
    e = sub.add_parser("evaluate", help="evaluate a trained run or model folder on a dataset file")
    e.add_argument("run_dir")
    e.add_argument("overrides", nargs="*", help="data.path=FILE data.split=test output=FILE ...")
    pr = sub.add_parser("predict", help="predict on files, folders or dataset files; writes JSONL")
    pr.add_argument("model_dir")
    pr.add_argument("input")
    pr.add_argument("overrides", nargs="*", help="output=FILE batch_size=N data.split=...")
    se = sub.add_parser("search", help="hyperparameter search over a recipe's search: section (Optuna studies)")
    se.add_argument("overrides", nargs="*", help="recipe=FILE.yaml and dotted key=value overrides (search.* too)")
    lf = sub.add_parser("lr-find", help="learning-rate range test on a recipe's model, data and optimizer groups")
    lf.add_argument(
        "overrides", nargs="*", help="recipe=NAME key=value ... [output=DIR start_lr=1e-7 end_lr=10 steps=100]"
    )
    so = sub.add_parser("soup", help="average fine-tuned models (uniform or greedy model soup) into a model folder")
    so.add_argument("args", nargs="*", help="RUN_OR_MODEL ... method=greedy metric=M data.path=FILE output=DIR")
    av = sub.add_parser("average", help="average a finished run's last or best checkpoints into a model folder")
    av.add_argument("run_dir")
    av.add_argument("overrides", nargs="*", help="last=K | top=K metric=eval_loss, data.path=FILE output=DIR")
    ip = sub.add_parser("interpolate", help="WiSE-FT: interpolate a run's weights with the weights it started from")
    ip.add_argument("run_dir")
    ip.add_argument("overrides", nargs="*", help="alpha=0.5|sweep base=RUN_OR_MODEL data.path=FILE output=DIR")
    r = sub.add_parser("report", help="regenerate plots, report.md and the model card of a finished run")
    r.add_argument("run_dir")
    pu = sub.add_parser("push", help="push a finished run's model folder to the Hugging Face Hub (private)")
    pu.add_argument("run_dir")
    pu.add_argument("repo_id", help="namespace/name on the Hub")
    pu.add_argument("--public", action="store_true", help="create the repository public (default: private)")
    return p


def _recipe_for(cfg):
    return RECIPES.get(cfg.task)(cfg)


@COMMANDS.register("train")
def cmd_train(args: argparse.Namespace) -> int:
    if args.help:
        if any(o.startswith("recipe=") for o in args.overrides):
            return cmd_show(args)
        _parser()._subparsers._group_actions[0].choices["train"].print_help()
        print("\nrecipes (hf-tune train recipe=NAME --help lists a recipe's keys):")
        return cmd_recipes(args)
    if args.dry_run:
        print(json.dumps(plan_training(_recipe_for(load_config(args.overrides)))))
        return 0
    cfg = load_config(args.overrides)
    from hf_tune.search_study import note_search_section

    note_search_section(cfg)
    result = run_training(_recipe_for(cfg))
    log(f"rank {result.process_index} metrics {json.dumps(_scalar(result.metrics), sort_keys=True)}")
    if result.is_main_process:
        log(f"model saved to {result.model_dir} (metrics: {result.model_dir / 'metrics.json'})")
        out = {"output_dir": str(result.output_dir), "model_dir": str(result.model_dir), **_scalar(result.metrics)}
        print(json.dumps(out))
    return 0


@COMMANDS.register("show")
def cmd_show(args: argparse.Namespace) -> int:
    from hf_tune.explain import describe, format_rows, resolve_for_display

    print(format_rows(describe(resolve_for_display(args.overrides))))
    return 0


@COMMANDS.register("recipes")
def cmd_recipes(args: argparse.Namespace) -> int:
    for name, path in available_recipes().items():
        data = load_recipe_yaml(path)  # resolves `base:` so inherited task/description show
        print(f"{name:<28} {data.get('task', '?'):<22} {data.get('description', '')}")
    return 0


def _split_extra(overrides: list[str], extra: tuple[str, ...]) -> tuple[dict[str, str], list[str]]:
    """Separate command options (``output=F``) from config overrides (``data.path=F``)."""
    opts, rest = {}, []
    for o in overrides:
        key, _, value = o.partition("=")
        if key in extra and value:
            opts[key] = value
        else:
            rest.append(o)
    return opts, rest


def _task_kwargs(opts: dict[str, str]) -> dict[str, str]:
    return {"task": opts["task"]} if "task" in opts else {}


@COMMANDS.register("evaluate")
def cmd_evaluate(args: argparse.Namespace) -> int:
    model_dir = find_model_dir(args.run_dir)
    opts, overrides = _split_extra(args.overrides, ("output", "task"))
    cfg = load_run_config(model_dir, overrides, opts.get("task"))
    metrics = _recipe_for(cfg).evaluate_saved(model_dir, **_task_kwargs(opts))
    source = _data_source(cfg)
    line = json.dumps({"data": source, **_scalar(metrics)})
    # one file per evaluated source and split: evaluating other data never overwrites an earlier result
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(source).stem if source else "data")
    out = Path(opts.get("output") or model_dir / f"eval_{metrics['split']}_{stem}.json")
    out.write_text(line + "\n")
    print(line)
    return 0


@COMMANDS.register("predict")
def cmd_predict(args: argparse.Namespace) -> int:
    model_dir = find_model_dir(args.model_dir)
    opts, overrides = _split_extra(args.overrides, ("output", "batch_size", "task"))
    cfg = load_run_config(model_dir, overrides, opts.get("task"))
    if not Path(args.input).exists():
        raise FileNotFoundError(f"{args.input}: input file or folder not found")
    batch_size = opts.get("batch_size", "32")
    if not str(batch_size).isdigit() or int(batch_size) < 1:
        raise ConfigError([f"batch_size={batch_size}: must be a whole number >= 1"])
    rows = _recipe_for(cfg).predict(model_dir, args.input, batch_size=int(batch_size), **_task_kwargs(opts))
    if "output" not in opts:
        for row in rows:
            print(json.dumps(row), flush=True)
        return 0
    # a temporary file renamed on success: an existing output is never truncated by a run that fails
    out = Path(opts["output"])
    tmp = out.with_name(f".{out.name}.partial")
    try:
        with open(tmp, "w") as sink:
            for row in rows:
                sink.write(json.dumps(row) + "\n")
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return 0


@COMMANDS.register("search")
def cmd_search(args: argparse.Namespace) -> int:
    import signal

    from hf_tune.search_study import run_search

    def stop(signum, frame):  # SIGTERM ends the search like Ctrl-C: running trials stop, the study is kept
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        summary = run_search(args.overrides)
    except KeyboardInterrupt:
        log(f"search interrupted; the study is kept: run hf-tune search {' '.join(args.overrides)} again to continue")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(json.dumps(summary))
    return 0


@COMMANDS.register("lr-find")
def cmd_lr_find(args: argparse.Namespace) -> int:
    from hf_tune.lr_find import OPTIONS, lr_find

    opts, overrides = _split_extra(args.overrides, tuple(OPTIONS))
    print(json.dumps(lr_find(load_config(overrides), **opts)))
    return 0


FUSION_OPTIONS = ("method", "metric", "output", "bn_batches", "last", "top", "alpha", "base")


def _fusion_options(args: list[str], allowed: tuple[str, ...]) -> tuple[dict[str, str], list[str]]:
    """``key=value`` options of a fusion command; the rest must be ``data.*`` overrides of the evaluation data."""
    opts, rest = _split_extra(args, FUSION_OPTIONS)
    wrong = [k for k in opts if k not in allowed] + [o for o in rest if not o.startswith("data.")]
    if wrong:
        raise ConfigError([f"{w}: not an option here; options: {', '.join(allowed)}, and data.*" for w in wrong])
    for key in ("bn_batches", "last", "top"):
        if key in opts and not opts[key].isdigit():
            raise ConfigError([f"{key}={opts[key]}: must be a whole number"])
    return opts, rest


def _ints(opts: dict[str, str]) -> dict[str, object]:
    return {k: int(v) if k in ("bn_batches", "last", "top") else v for k, v in opts.items()}


@COMMANDS.register("soup")
def cmd_soup(args: argparse.Namespace) -> int:
    from hf_tune.soup import soup

    paths = [a for a in args.args if "=" not in a]
    opts, overrides = _fusion_options([a for a in args.args if "=" in a], ("method", "metric", "output", "bn_batches"))
    print(json.dumps(soup(paths, overrides=overrides, **_ints(opts))))
    return 0


@COMMANDS.register("average")
def cmd_average(args: argparse.Namespace) -> int:
    from hf_tune.soup import average_checkpoints

    opts, overrides = _fusion_options(args.overrides, ("last", "top", "metric", "output", "bn_batches"))
    print(json.dumps(average_checkpoints(args.run_dir, overrides=overrides, **_ints(opts))))
    return 0


@COMMANDS.register("interpolate")
def cmd_interpolate(args: argparse.Namespace) -> int:
    from hf_tune.soup import interpolate

    opts, overrides = _fusion_options(args.overrides, ("alpha", "base", "metric", "output", "bn_batches"))
    print(json.dumps(interpolate(args.run_dir, overrides=overrides, **_ints(opts))))
    return 0


@COMMANDS.register("report")
def cmd_report(args: argparse.Namespace) -> int:
    from hf_tune.hub import write_model_card
    from hf_tune.report import write_report

    model_dir = find_model_dir(args.run_dir)
    cfg = load_saved_config(model_dir / RESOLVED_CONFIG_NAME)
    report = write_report(model_dir, title=cfg.recipe or cfg.task)
    metrics_file = model_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    card = write_model_card(cfg, model_dir, metrics)
    print(json.dumps({"report": str(report), "model_card": str(card)}))
    return 0


@COMMANDS.register("push")
def cmd_push(args: argparse.Namespace) -> int:
    from hf_tune.hub import push_model

    model_dir = find_model_dir(args.run_dir)
    cfg = load_saved_config(model_dir / RESOLVED_CONFIG_NAME)
    url = push_model(model_dir, args.repo_id, cfg, private=not args.public)  # token: HF_TOKEN or the cached login
    print(json.dumps({"repo_id": args.repo_id, "url": url, "private": not args.public}))
    return 0


def _data_source(cfg) -> str | None:
    """The evaluated data's path (multi-task: the tasks' paths joined)."""
    data = getattr(cfg, "data", None)
    if data is not None:
        return getattr(data, "path", None)
    tasks = getattr(cfg, "tasks", {}) or {}
    paths = sorted({str(t.data.get("path")) for t in tasks.values() if t.data.get("path")})
    return "+".join(paths) or None


def _scalar(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool)) or v is None}


if __name__ == "__main__":
    sys.exit(main())
