"""Reports, model cards and pushing to the Hub, offline: the Hub API is replaced by a local fake."""

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from hf_tune.cli import main

pytestmark = pytest.mark.slow

TOKEN = "hf_SECRETtokenFORtests123"


class FakeHub:
    """Stands in for huggingface_hub.HfApi's network calls: repos are folders under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root, self.repos, self.tokens = root, {}, []

    def install(self, monkeypatch) -> None:
        from huggingface_hub import HfApi
        from huggingface_hub.utils import filter_repo_objects

        hub = self

        def create_repo(api, repo_id, *, token=None, private=None, exist_ok=False, **kw):
            hub.tokens.append(token or api.token)
            hub.repos[repo_id] = {"private": private}
            (hub.root / repo_id).mkdir(parents=True, exist_ok=True)
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(api, *, repo_id, folder_path, ignore_patterns=None, **kw):
            assert repo_id in hub.repos, "upload before create_repo"
            folder = Path(folder_path)
            files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
            for rel in filter_repo_objects(files, ignore_patterns=ignore_patterns):
                dest = hub.root / repo_id / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(folder / rel, dest)
            return "commit"

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)


def _valid_png(path: Path) -> None:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100


def test_image_run_writes_report_card_and_pushes_pipeline_ready_folder(tiny_image_args, tmp_path, capsys, monkeypatch):
    args = [*tiny_image_args, "card.medical=true", "training.eval_strategy=steps", "training.eval_steps=2"]
    assert main(["train", *args]) == 0
    capsys.readouterr()
    model = tmp_path / "run" / "model"
    plots = {p.name for p in (model / "plots").glob("*.png")}
    assert {"training_curves.png", "confusion_val.png", "roc_pr_val.png"} <= plots
    for p in (model / "plots").glob("*.png"):
        _valid_png(p)
    report = (model / "report.md").read_text()
    assert "![Confusion matrix](plots/confusion_val.png)" in report and "| eval_accuracy |" in report
    card = (model / "README.md").read_text()
    assert card.startswith("---\n") and "pipeline_tag: image-classification" in card
    assert "Not for clinical use" in card and "| eval_roc_auc |" in card and "plots/roc_pr_val.png" in card

    # report regenerates from the folder alone (checkpoints gone)
    for p in (model / "plots").glob("*.png"):
        p.unlink()
    for ckpt in (tmp_path / "run").glob("checkpoint-*"):
        shutil.rmtree(ckpt)
    assert main(["report", str(tmp_path / "run")]) == 0
    assert json.loads(capsys.readouterr().out)["report"].endswith("report.md")
    assert {"training_curves.png", "confusion_val.png", "roc_pr_val.png"} <= {
        p.name for p in (model / "plots").glob("*.png")
    }

    hub = FakeHub(tmp_path / "hub")
    hub.install(monkeypatch)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert main(["push", str(tmp_path / "run"), "me/tiny-xray"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["private"] is True and hub.repos["me/tiny-xray"]["private"] is True
    assert TOKEN not in out + err
    repo = tmp_path / "hub" / "me" / "tiny-xray"
    files = {p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file()}
    expected = {
        "model.safetensors",
        "config.json",
        "README.md",
        "resolved_config.yaml",
        "metrics.json",
        "report.md",
        "plots/training_curves.png",
        "plots/confusion_val.png",
    }
    assert expected <= files and "training_args.bin" not in files
    # timm models keep their processor settings in config.json (transformers' TimmWrapper design)
    from transformers import AutoImageProcessor

    assert AutoImageProcessor.from_pretrained(repo).__class__.__name__ == "TimmWrapperImageProcessor"
    for f in files:
        assert TOKEN not in (repo / f).read_bytes().decode("latin-1"), f
    assert 'pipeline("image-classification", model="me/tiny-xray")' in (repo / "README.md").read_text()

    # the uploaded folder loads with pipeline() and agrees with hf-tune predict
    import numpy as np
    from transformers import pipeline

    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    for i, a in enumerate(np.load(tmp_path / "tiny_test.npz")["test_images"][:3]):
        Image.fromarray(a).save(img_dir / f"{i}.png")
    assert main(["predict", str(tmp_path / "run"), str(img_dir)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    pipe = pipeline("image-classification", model=str(repo))
    for row in rows:
        top = pipe(row["input"])[0]
        assert top["label"] == row["label"] and top["score"] == pytest.approx(row["score"], abs=1e-4)


def test_train_with_push_to_hub_pushes_privately_and_keeps_token_out(
    tiny_bert, contracts_jsonl, tmp_path, capsys, monkeypatch
):
    hub = FakeHub(tmp_path / "hub")
    hub.install(monkeypatch)
    run = tmp_path / "run"
    args = [
        "recipe=clause_type_minilm",
        f"model.name={tiny_bert}",
        f"data.path={contracts_jsonl}",
        "data.split_ratios=[0.75,0.25,0.0]",
        f"training.output_dir={run}",
        "training.max_steps=3",
        "training.num_train_epochs=1",
        "training.eval_strategy=no",
        "training.save_strategy=steps",
        "training.save_steps=2",
        "training.disable_tqdm=true",
        "training.push_to_hub=true",
        "training.hub_model_id=me/clause-types",
        f"training.hub_token={TOKEN}",
    ]
    assert main(["train", *args]) == 0
    out, err = capsys.readouterr()
    assert TOKEN not in out + err and hub.tokens == [TOKEN]
    assert hub.repos["me/clause-types"]["private"] is True
    repo = tmp_path / "hub" / "me" / "clause-types"
    for name in ("model.safetensors", "tokenizer.json", "README.md", "resolved_config.yaml", "plots/confusion_val.png"):
        assert (repo / name).is_file(), name
    assert list(run.glob("checkpoint-*/training_args.bin"))  # a checkpoint holds Trainer's pickled arguments
    files = [p for root in (run, repo) for p in root.rglob("*") if p.is_file()]  # checkpoints, model/, pushed copy
    assert [str(p) for p in files if TOKEN.encode() in p.read_bytes()] == []

    from transformers import pipeline

    clf = pipeline("text-classification", model=str(repo))
    text = "Neither party may assign this Agreement without the prior written consent of the other ."
    got = clf(text)[0]
    doc = tmp_path / "clause.txt"
    doc.write_text(text)
    assert main(["predict", str(run), str(doc)]) == 0
    mine = json.loads(capsys.readouterr().out)
    assert got["label"] == mine["label"] and got["score"] == pytest.approx(mine["score"], abs=1e-4)


def _http():
    """The HTTP client huggingface_hub is built on (httpx2 since huggingface_hub 2, httpx before)."""
    import importlib

    try:
        return importlib.import_module("httpx2")
    except ImportError:
        return importlib.import_module("httpx")


def _http_error(status: int):
    from huggingface_hub.errors import HfHubHTTPError

    httpx = _http()
    request = httpx.Request("POST", "https://huggingface.co/api/repos/create")
    return HfHubHTTPError(f"{status} Client Error", response=httpx.Response(status, request=request))


def _push_failures():
    from huggingface_hub.errors import OfflineModeIsEnabled

    httpx = _http()
    return {
        "no network": (ConnectionError("Failed to resolve 'huggingface.co'"), "unreachable"),
        "httpx connect": (httpx.ConnectError("[Errno -3] Temporary failure in name resolution"), "unreachable"),
        "bad token": (_http_error(401), "refused the token"),
        "no permission": (_http_error(403), "may not write to me/x"),
        "offline mode": (OfflineModeIsEnabled("offline"), "HF_HUB_OFFLINE"),
        "token echoed": (RuntimeError("bad token hf_SECRETTOKEN1234"), "RuntimeError"),
    }


@pytest.mark.parametrize(
    "case", ["no network", "httpx connect", "bad token", "no permission", "offline mode", "token echoed"]
)
def test_push_failures_are_clear_and_leave_the_card_as_it_was(case, tiny_image_args, tmp_path, capsys, monkeypatch):
    from huggingface_hub import HfApi

    assert main(["train", *tiny_image_args]) == 0
    card = (tmp_path / "run" / "model" / "README.md").read_text()
    capsys.readouterr()
    exc, message = _push_failures()[case]

    def fail(*a, **k):
        raise exc

    monkeypatch.setattr(HfApi, "create_repo", fail)
    assert main(["push", str(tmp_path / "run"), "me/x"]) == 2
    err = capsys.readouterr().err
    assert message in err and "hf-tune push" in err and "Traceback" not in err
    assert "hf_SECRETTOKEN1234" not in err
    assert (tmp_path / "run" / "model" / "README.md").read_text() == card


def _token_and_multitask_args(kind, model, data, out):
    common = [
        f"model.name={model}",
        f"training.output_dir={out}",
        "training.max_steps=3",
        "training.save_strategy=no",
        "training.disable_tqdm=true",
    ]
    if kind == "token":
        return ["recipe=contract_tagging_minilm", f"data.path={data}", "data.window=32", "data.stride=15", *common]
    extra = [f"tasks.{t}.data.path={data}" for t in ("clauses", "clause_types")]
    return [
        "recipe=contracts_multitask",
        "tasks.clauses.data.window=32",
        "tasks.clauses.data.stride=15",
        *extra,
        *common,
    ]


@pytest.mark.parametrize("kind", ["token", "multitask"])
def test_push_token_and_multitask_models_load_back(kind, tiny_bert, contracts_jsonl, tmp_path, capsys, monkeypatch):
    import torch
    from transformers import AutoTokenizer

    run = tmp_path / "run"
    assert main(["train", *_token_and_multitask_args(kind, tiny_bert, contracts_jsonl, run)]) == 0
    capsys.readouterr()
    hub = FakeHub(tmp_path / "hub")
    hub.install(monkeypatch)
    assert main(["push", str(run), "me/m", "--public"]) == 0
    assert hub.repos["me/m"]["private"] is False
    repo = tmp_path / "hub" / "me" / "m"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "README.md", "resolved_config.yaml"):
        assert (repo / name).is_file(), name
    text = "This Agreement shall be governed by the laws of the State of Delaware ."
    if kind == "token":
        from transformers import pipeline

        tagger = pipeline("token-classification", model=str(repo))
        labels = set(json.loads((repo / "config.json").read_text())["id2label"].values())
        assert all(e["entity"] in labels for e in tagger(text))
        assert "pipeline_tag: token-classification" in (repo / "README.md").read_text()
    else:
        from hf_tune.multihead import MultiHeadModel

        tok = AutoTokenizer.from_pretrained(repo)
        batch = tok([text], return_tensors="pt")
        a = MultiHeadModel.from_pretrained(repo).eval()
        b = MultiHeadModel.from_pretrained(run / "model").eval()
        with torch.no_grad():
            for task in ("clauses", "clause_types"):
                torch.testing.assert_close(a(**batch, task=task).logits[task], b(**batch, task=task).logits[task])
        assert 'AutoModel.from_pretrained("me/m")' in (repo / "README.md").read_text()
