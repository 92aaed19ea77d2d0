"""Weight fusion, distillation and anti-forgetting on real data, each row against the same budget without it,
through the CLI a user runs (``hf-tune train``, ``soup``, ``interpolate``, ``evaluate``). One JSON line per row.

Row groups (``--rows``):

- ``soup``: ``pneumonia_resnet18`` (the base run), then ``--ingredients`` fine-tunes of it for ``--ft-epochs``
  epochs that differ in seed, learning rate and augmentation; the uniform and the greedy soup of them
  (``hf-tune soup``, ingredients ranked on the val split) against the best single fine-tune and the base;
- ``swa``: three ``pneumonia_resnet18`` runs from scratch: EMA (the recipe's default), neither, SWA;
- ``distill_image``: a ResNet-10t student at 64 px alone vs distilled from the greedy soup (the teacher);
- ``distill_text``: CUAD clause type (``clause_type_minilm``): the 6-layer MiniLM teacher, a 3-layer student
  (every other layer of the packaged MiniLM) alone and distilled, with parameters and inference examples/s;
- ``wise``: WiSE-FT alpha sweep of the clause-type teacher (``hf-tune interpolate alpha=sweep``) on val;
- ``forgetting``: task A = pneumonia (the base run), task B = scikit-learn digits fine-tuned from A with no
  anchor, L2-SP and EWC, and with no anchor and EWC 1e4 with A's BatchNorm statistics kept
  (``techniques.anchor.freeze_bn_stats``); A's val accuracy after B (A's head on B's backbone) and B's accuracy.
  ``--anchors`` runs some of these rows only, ``--base`` reuses a finished base run (else the soup's, else one is
  trained);
- ``l2sp_small``: clause type on ``--small-share`` of the training clauses, with and without L2-SP.

Metrics are on the validation splits (PneumoniaMNIST's official val split; the clause-type recipe's carved val
split of the training contracts). Usage: python bench/fusion.py [--rows soup swa ...] [--pneumonia NPZ]
[--cuad JSONL] [--ingredients 4] [--ft-epochs 3] [--text-steps 300] [--anchors none ewc_10000_bn_frozen ...]
[--base RUN]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from data_paths import CUAD, PNEUMONIA, require  # noqa: E402

ROW_GROUPS = ("soup", "swa", "distill_image", "distill_text", "wise", "forgetting", "l2sp_small")
IMAGE_KEYS = ("accuracy", "roc_auc", "f1_macro")
TEXT_KEYS = ("accuracy", "f1_macro", "f1_weighted")
EWC = ["techniques.anchor.method=ewc", "techniques.anchor.fisher_samples=256"]
FREEZE_BN = ["techniques.anchor.freeze_bn_stats=true"]
FORGETTING_ANCHORS = {
    "none": [],
    **{f"l2sp_{a}": ["techniques.anchor.method=l2sp", f"techniques.anchor.strength={a}"] for a in (0.01, 0.1, 1)},
    **{f"ewc_{a:g}": [*EWC, f"techniques.anchor.strength={a:g}"] for a in (1e2, 1e4, 1e6)},
    # A's BatchNorm statistics kept through B's training: what EWC had forgotten through (docs/benchmarks.md)
    "none_bn_frozen": FREEZE_BN,
    "ewc_10000_bn_frozen": [*EWC, "techniques.anchor.strength=10000", *FREEZE_BN],
}
"""forgetting rows: B's training settings by row name (``--anchors``)."""


def cli(*args: str) -> tuple[dict, float]:
    t0 = time.time()
    proc = subprocess.run(["hf-tune", *args], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"hf-tune {' '.join(args[:3])} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), time.time() - t0


def evaluate(run: Path, data: Path, keys: tuple[str, ...], *extra: str) -> dict:
    m, _ = cli("evaluate", str(run), f"data.path={data}", "data.split=val", *extra)
    return {k: round(m[k], 4) for k in keys if k in m}


def train(run: Path, recipe: str, data: Path, *overrides: str) -> float:
    _, secs = cli("train", f"recipe={recipe}", f"data.path={data}", f"training.output_dir={run}", *overrides)
    return round(secs / 60, 2)


def row(name: str, **values) -> None:
    print(json.dumps({"row": name, **values}), flush=True)


IMAGE_QUIET = ["training.save_strategy=no", "training.eval_strategy=no"]


def base_run(tmp: Path, npz: Path) -> tuple[Path, float]:
    """``pneumonia_resnet18`` from scratch: the soup ingredients' start and the forgetting rows' task A."""
    base = tmp / "base"
    return base, train(base, "pneumonia_resnet18", npz, *IMAGE_QUIET)


def soup_rows(tmp: Path, npz: Path, n: int, epochs: int) -> tuple[Path, float, Path]:
    base, base_minutes = base_run(tmp, npz)
    row("soup_base_run", **evaluate(base, npz, IMAGE_KEYS), train_minutes=base_minutes)
    variants = [
        ["training.learning_rate=1e-3"],
        ["training.learning_rate=5e-4", "data.augmentation.scale=[0.6,1.0]"],
        ["training.learning_rate=2e-3", "data.augment=false"],
        ["training.learning_rate=1e-3", "data.augmentation.scale=[0.9,1.0]", "training.label_smoothing_factor=0"],
        ["training.learning_rate=3e-4"],
        ["training.learning_rate=1.5e-3", "data.augmentation.ratio=[0.8,1.25]"],
    ]
    runs = []
    for i in range(n):
        run = tmp / f"ft{i}"
        extra = [
            f"model.name={base}",
            f"training.num_train_epochs={epochs}",
            f"training.seed={i + 1}",
            *variants[i % 6],
        ]
        minutes = train(run, "pneumonia_resnet18", npz, *IMAGE_QUIET, "training.warmup_steps=0", *extra)
        row(f"soup_ingredient_{i}", overrides=variants[i % 6], **evaluate(run, npz, IMAGE_KEYS), train_minutes=minutes)
        runs.append(run)
    greedy = tmp / "greedy"
    for method, out in (("uniform", tmp / "uniform"), ("greedy", greedy)):
        _, secs = cli("soup", *map(str, runs), f"method={method}", f"data.path={npz}", f"output={out}")
        record = json.loads((out / "fusion.json").read_text())
        chosen = sum(i["in_soup"] for i in record["ingredients"])
        row(f"soup_{method}", ingredients=chosen, **evaluate(out, npz, IMAGE_KEYS), soup_minutes=round(secs / 60, 2))
    return base, base_minutes, greedy


def swa_rows(tmp: Path, npz: Path, base: Path | None, base_minutes: float | None) -> None:
    """EMA (the recipe's default), neither, SWA; the EMA row reuses the soup's base run when there is one (the
    same command: the recipe with ``IMAGE_QUIET`` and nothing else), which saves one from-scratch run."""
    settings = {
        "ema": [],
        "neither": ["techniques.ema.enabled=false"],
        "swa": ["techniques.ema.enabled=false", "techniques.swa.enabled=true", "techniques.swa.start=0.75"],
        "swa_lr": [
            "techniques.ema.enabled=false",
            "techniques.swa.enabled=true",
            "techniques.swa.start=0.75",
            "techniques.swa.lr=5e-4",
            "techniques.swa.anneal_steps=20",
        ],
    }
    for name, extra in settings.items():
        run = tmp / f"avg_{name}"
        if name == "ema" and base is not None:
            run, minutes = base, base_minutes
        else:
            minutes = train(run, "pneumonia_resnet18", npz, *IMAGE_QUIET, *extra)
        row(f"averaging_{name}", overrides=extra, **evaluate(run, npz, IMAGE_KEYS), train_minutes=minutes)


def distill_image_rows(tmp: Path, npz: Path, teacher: Path) -> None:
    student = ["model.name=resnet10t", *IMAGE_QUIET]
    row("distill_image_teacher", teacher=str(teacher), **evaluate(teacher, npz, IMAGE_KEYS), params=_params(teacher))
    for name, extra in (
        ("alone", []),
        ("distilled", [f"techniques.distill.teacher={teacher}", "techniques.distill.alpha=0.5"]),
    ):
        run = tmp / f"student_{name}"
        minutes = train(run, "pneumonia_resnet18", npz, *student, *extra)
        row(
            f"distill_image_student_{name}",
            **evaluate(run, npz, IMAGE_KEYS),
            params=_params(run),
            train_minutes=minutes,
        )


def _params(run: Path) -> int:
    from safetensors.torch import load_file

    folder = run / "model" if (run / "model").is_dir() else run
    return sum(v.numel() for k, v in load_file(str(folder / "model.safetensors")).items() if "running" not in k)


def _throughput(run: Path, texts: list[str]) -> float:
    """Inference examples/s of a text classifier on ``texts`` (batch 64, as hf-tune predict batches)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = run / "model"
    tok, model = (
        AutoTokenizer.from_pretrained(str(folder)),
        AutoModelForSequenceClassification.from_pretrained(str(folder)),
    )
    model.eval()
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(texts), 64):
            model(**tok(texts[i : i + 64], truncation=True, max_length=128, padding=True, return_tensors="pt"))
    return round(len(texts) / (time.perf_counter() - t0), 1)


def text_rows(tmp: Path, cuad: Path, steps: int, groups: list[str]) -> None:
    budget = [f"training.max_steps={steps}", "training.eval_strategy=no", "training.save_strategy=no"]
    teacher = tmp / "type_teacher"
    minutes = train(teacher, "clause_type_minilm", cuad, *budget)
    docs = [json.loads(line) for line in cuad.read_text().splitlines()[:40] if line.strip()]
    texts = [d["text"][s["start"] : s["end"]] for d in docs for s in d["spans"]][:512]
    if "distill_text" in groups:
        row(
            "distill_text_teacher",
            layers=6,
            **evaluate(teacher, cuad, TEXT_KEYS),
            params=_params(teacher),
            examples_per_s=_throughput(teacher, texts),
            train_minutes=minutes,
        )
        three = ["model.num_layers=3"]
        for name, extra in (("alone", three), ("distilled", [*three, f"techniques.distill.teacher={teacher}"])):
            run = tmp / f"type_student_{name}"
            minutes = train(run, "clause_type_minilm", cuad, *budget, *extra)
            row(
                f"distill_text_student_{name}",
                layers=3,
                **evaluate(run, cuad, TEXT_KEYS),
                params=_params(run),
                examples_per_s=_throughput(run, texts),
                train_minutes=minutes,
            )
    if "wise" in groups:
        out = tmp / "type_wise"
        result, secs = cli("interpolate", str(teacher), "alpha=sweep", f"output={out}")
        row(
            "wise_ft_clause_type",
            best_alpha=result["alpha"],
            sweep=result["sweep"],
            minutes=round(secs / 60, 2),
            **evaluate(out, cuad, TEXT_KEYS),
        )


def graft_score(a: Path, b: Path, npz: Path) -> dict:
    """Task A's metrics with A's head on B's backbone (B was fine-tuned from A on another task)."""
    from safetensors.torch import load_file, save_file

    out = b.parent / f"{b.name}_with_A_head"
    subprocess.run(["cp", "-r", str(a / "model"), str(out)], check=True)
    weights = load_file(str(out / "model.safetensors"))
    backbone = {k: v for k, v in load_file(str(b / "model" / "model.safetensors")).items() if ".fc." not in k}
    weights.update(backbone)
    save_file(weights, str(out / "model.safetensors"))
    return evaluate(out, npz, IMAGE_KEYS)


def forgetting_rows(tmp: Path, npz: Path, base: Path, names: list[str]) -> None:
    digits = ["data.labels=null", "training.num_train_epochs=3", *IMAGE_QUIET]
    row("forgetting_task_a_before", **evaluate(base, npz, IMAGE_KEYS))
    for name in names:
        extra = FORGETTING_ANCHORS[name]
        run = tmp / f"task_b_{name}"
        minutes = train(run, "pneumonia_resnet18", Path("sklearn:digits"), f"model.name={base}", *digits, *extra)
        b = evaluate(run, Path("sklearn:digits"), ("accuracy",))
        row(
            f"forgetting_{name}",
            task_a_after=graft_score(base, run, npz),
            task_b_accuracy=b["accuracy"],
            train_minutes=minutes,
        )


def l2sp_small_rows(tmp: Path, cuad: Path, share: float) -> None:
    n = sum(len(json.loads(line)["spans"]) for line in cuad.read_text().splitlines() if line.strip())
    small = [
        f"data.max_train_samples={int(n * 0.85 * share)}",
        "training.num_train_epochs=4",
        "training.eval_strategy=no",
        "training.save_strategy=no",
    ]
    strengths = [("none", [])] + [
        (f"l2sp_{a}", ["techniques.anchor.method=l2sp", f"techniques.anchor.strength={a}"]) for a in (0.01, 0.1, 1)
    ]
    for name, extra in strengths:
        run = tmp / f"small_{name}"
        minutes = train(run, "clause_type_minilm", cuad, *small, *extra)
        row(f"l2sp_small_data_{name}", share=share, **evaluate(run, cuad, TEXT_KEYS), train_minutes=minutes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pneumonia", type=Path, default=PNEUMONIA, help="PneumoniaMNIST .npz with train and val")
    ap.add_argument("--cuad", type=Path, default=CUAD, help="CUAD span JSONL")
    ap.add_argument("--rows", nargs="*", default=list(ROW_GROUPS), choices=ROW_GROUPS)
    ap.add_argument("--ingredients", type=int, default=4)
    ap.add_argument("--ft-epochs", type=int, default=3)
    ap.add_argument("--text-steps", type=int, default=300)
    ap.add_argument("--small-share", type=float, default=0.1)
    ap.add_argument("--work", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    ap.add_argument("--anchors", nargs="*", default=list(FORGETTING_ANCHORS), choices=list(FORGETTING_ANCHORS))
    ap.add_argument("--base", type=Path, default=None, help="forgetting: a finished pneumonia_resnet18 run as task A")
    a = ap.parse_args()
    tmp = a.work or Path(tempfile.mkdtemp(prefix="hf_tune_bench_fusion_"))
    tmp.mkdir(parents=True, exist_ok=True)
    image = {"soup", "swa", "distill_image", "forgetting"} & set(a.rows)
    text = {"distill_text", "wise", "l2sp_small"} & set(a.rows)
    npz = require(a.pneumonia, "pneumoniamnist") if image else None
    cuad = require(a.cuad, "cuad") if text else None
    base = base_minutes = teacher = None
    if {"soup", "distill_image"} & set(a.rows):
        base, base_minutes, teacher = soup_rows(tmp, npz, a.ingredients, a.ft_epochs)
    elif "forgetting" in a.rows and a.base is None:
        base, base_minutes = base_run(tmp, npz)
    if "swa" in a.rows:
        swa_rows(tmp, npz, base, base_minutes)
    if "distill_image" in a.rows:
        distill_image_rows(tmp, npz, teacher)
    if "forgetting" in a.rows:
        forgetting_rows(tmp, npz, a.base or base, a.anchors)
    if {"distill_text", "wise"} & set(a.rows):
        text_rows(tmp, cuad, a.text_steps, a.rows)
    if "l2sp_small" in a.rows:
        l2sp_small_rows(tmp, cuad, a.small_share)


if __name__ == "__main__":
    main()
