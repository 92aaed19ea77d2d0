"""Script entry point: ``accelerate launch hf_tune/train.py recipe=NAME key=value ...``.

Also ``python -m hf_tune.train ...`` and ``python hf_tune/train.py ...``; all equal ``hf-tune train ...``.
"""

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a file, Python puts hf_tune/ first on sys.path; make the repo root importable instead so
    # ``import hf_tune`` works from a checkout that is not pip-installed.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from hf_tune.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
