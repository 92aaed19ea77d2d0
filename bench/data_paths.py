"""Where the benchmarks' data and baseline scripts are, and where to get them.

Every bench script takes the paths as arguments; the defaults are the layout beside a checkout
(``../shared/data`` and ``../shared/bench``), or ``$HF_TUNE_DATA`` / ``$HF_TUNE_BASELINES`` when set.
:func:`require` stops a script with the dataset's public source when a file is missing.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("HF_TUNE_DATA", REPO.parent / "shared" / "data"))
BASELINES = Path(os.environ.get("HF_TUNE_BASELINES", REPO.parent / "shared" / "bench"))
CUAD = DATA / "cuad" / "cuad_train.jsonl"
PNEUMONIA = DATA / "pneumoniamnist" / "pneumoniamnist_trainval.npz"

SOURCES = {
    "cuad": (
        "CUAD v1 (The Atticus Project, CC BY 4.0: https://www.atticusprojectai.org/cuad). The benchmarks read it as a "
        'span JSONL, one contract per line: {"title", "text", "spans": [{"category", "start", "end", '
        '"text"}]}, built from CUAD\'s full_contract_txt/ and master_clauses.csv by finding each clause text in its '
        "contract (text[start:end] == span text)"
    ),
    "pneumoniamnist": (
        "PneumoniaMNIST from MedMNIST v2 (CC BY 4.0: https://medmnist.com, `pip install medmnist`; Zenodo record "
        "10519652). The benchmarks read an .npz with train_images/train_labels and val_images/val_labels, the "
        "official MedMNIST splits (pneumoniamnist.npz without its test_* arrays)."
    ),
    "baselines": (
        "the plain-Trainer baseline scripts (baseline_trainer_image.py, baseline_trainer_cuad.py, "
        "baseline_trainer_ner.py, baseline_trainer_text.py, baseline_sentence_cuad.py) that the numbers are "
        "compared against"
    ),
}


def require(path: str | Path, what: str) -> Path:
    """``path`` if it exists; otherwise exit with what the file is and where the public data comes from."""
    p = Path(path)
    if not p.exists():
        raise SystemExit(f"{p} not found: this benchmark needs {SOURCES[what]}. Pass its path as an argument.")
    return p
