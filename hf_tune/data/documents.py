"""Loading span-annotated documents (token classification) and labelled texts (text classification)."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hf_tune.data.images import SPLIT_ALIASES, DataError, _existing, load_hf_dataset
from hf_tune.data.spans import Document, Span
from hf_tune.data.splits import concat_items
from hf_tune.registry import Registry

DOC_SOURCES: Registry[Callable[..., dict[str, list[Document]]]] = Registry("document format")


def read_text(path: str | Path) -> str:
    """A file's text as UTF-8, or a DataError naming the file and the first undecodable byte."""
    p = _existing(str(path))
    data = p.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{line}: not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start}); "
            f"re-save the file as UTF-8"
        ) from None


def jsonl_rows(path: str | Path) -> list[tuple[int, dict]]:
    """``(line number, object)`` for each non-empty line; errors name the file and line."""
    rows = []
    for n, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{n}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{n}: expected a JSON object per line, got {type(obj).__name__}")
        rows.append((n, obj))
    return rows


def _detect(path: str) -> str:
    p = path.lower()
    if p.endswith((".jsonl", ".json")):
        return "jsonl"
    if p.endswith((".conll", ".txt", ".iob", ".bio", ".tsv")):
        return "conll"
    return "hf"


def load_documents(path: str | None, fmt: str = "auto", **kw: Any) -> dict[str, list[Document]]:
    """``{split: documents}``; a single file is one ``train`` split (or ``all`` for evaluation)."""
    if not path:
        raise DataError("data.path is not set: give a span JSONL, a CoNLL file or a datasets name/path")
    fmt = _detect(path) if fmt == "auto" else fmt
    return DOC_SOURCES.get(fmt)(path, **kw)


@DOC_SOURCES.register("jsonl")
def load_span_jsonl(
    path: str,
    text_field: str = "text",
    spans_field: str = "spans",
    start_key: str = "start",
    end_key: str = "end",
    category_key: str = "category",
    **_: Any,
) -> dict[str, list[Document]]:
    """One JSON object per line: ``{"text": ..., "spans": [{"start", "end", "category"}, ...]}``."""
    docs = []
    for n, obj in jsonl_rows(path):
        if text_field not in obj:
            raise DataError(f"{path}:{n}: no {text_field!r} field (keys: {sorted(obj)}); set data.text_field")
        text = obj[text_field]
        if not isinstance(text, str):
            raise DataError(f"{path}:{n}: {text_field!r} is {type(text).__name__}, expected a string")
        raw_spans = obj.get(spans_field) or []
        if not isinstance(raw_spans, list):
            raise DataError(f"{path}:{n}: {spans_field!r} must be a list of span objects")
        spans = []
        for s in raw_spans:
            try:
                start, end = s[start_key], s[end_key]
                if isinstance(start, bool) or isinstance(end, bool) or int(start) != start or int(end) != end:
                    raise ValueError
                span = Span(int(start), int(end), str(s[category_key]))
            except KeyError as exc:
                raise DataError(f"{path}:{n}: span without {exc} (set data.start_key/end_key/category_key)") from None
            except (TypeError, ValueError):
                raise DataError(
                    f"{path}:{n}: span {s!r}: {start_key!r} and {end_key!r} must be integer character offsets"
                ) from None
            if not 0 <= span.start < span.end <= len(text):
                raise DataError(f"{path}:{n}: span {span.start}-{span.end} outside the text (length {len(text)})")
            spans.append(span)
        docs.append(Document(text, spans, str(obj.get("id", obj.get("title", n)))))
    if not docs:
        raise DataError(f"{path}: no documents")
    return {"train": docs}


def words_to_document(words: Sequence[str], tags: Sequence[str], doc_id: str) -> Document:
    """Join words with single spaces and turn BIO/IOB tags into character spans."""
    text, offsets, pos = [], [], 0
    for w in words:
        offsets.append((pos, pos + len(w)))
        text.append(w)
        pos += len(w) + 1
    spans, cur = [], None  # cur = [category, start, end]
    for (a, b), tag in zip(offsets, tags, strict=True):
        kind, _, cat = tag.partition("-")
        if kind == "I" and cur is not None and cur[0] == cat:
            cur[2] = b
            continue
        if cur is not None:
            spans.append(Span(cur[1], cur[2], cur[0]))
        cur = [cat, a, b] if kind in ("B", "I") and cat else None  # a stray I- (IOB1) opens a span
    if cur is not None:
        spans.append(Span(cur[1], cur[2], cur[0]))
    return Document(" ".join(text), spans, doc_id, word_level=True)


@DOC_SOURCES.register("conll")
def load_conll(path: str, **_: Any) -> dict[str, list[Document]]:
    """Whitespace-separated columns, token first and BIO tag last; blank lines end sentences."""
    docs, words, tags = [], [], []
    with open(_existing(path), encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("-DOCSTART-"):
                if words:
                    docs.append(words_to_document(words, tags, str(len(docs))))
                    words, tags = [], []
                continue
            parts = line.split()
            words.append(parts[0])
            tags.append(parts[-1])
    if words:
        docs.append(words_to_document(words, tags, str(len(docs))))
    if not docs:
        raise DataError(f"{path}: no sentences found (expected 'token ... tag' lines)")
    return {"train": docs}


@DOC_SOURCES.register("hf")
def load_hf_tokens(path: str, tokens_column: str = "tokens", tags_column: str = "ner_tags", **_: Any):
    """A datasets dataset with a list-of-words column and a list-of-tags column (ClassLabel ids or strings)."""
    ds = load_hf_dataset(path)
    out = {}
    for split, d in ds.items():
        for col in (tokens_column, tags_column):
            if col not in d.column_names:
                raise DataError(
                    f"{path} [{split}]: no column {col!r} (columns: {d.column_names}); "
                    f"set data.tokens_column / data.tags_column"
                )
        feat = d.features[tags_column]
        names = getattr(getattr(feat, "feature", None), "names", None)
        docs = []
        for i, row in enumerate(d):
            tags = [names[t] if names else str(t) for t in row[tags_column]]
            docs.append(words_to_document(row[tokens_column], tags, f"{split}-{i}"))
        out[SPLIT_ALIASES.get(split, split)] = docs
    return out


def load_document_splits(
    path: str | None, val_path: str | None, test_path: str | None, fmt: str, **kw: Any
) -> dict[str, list[Document]]:
    """Every split the sources give (``data.path`` plus whole ``val_path``/``test_path`` sources), before
    carving: what the token and clause kinds read, with the same field names (``kw``) for each source."""
    splits = load_documents(path, fmt, **kw)
    for name, extra in (("val", val_path), ("test", test_path)):
        if extra:
            splits[name] = concat_items(list(load_documents(extra, fmt, **kw).values()))
    return splits


def limit_splits(splits: dict[str, list], n_train: int | None, n_eval: int | None, seed: int, source: str | None):
    """Seeded subsets of train (``n_train``) and val/test (``n_eval``); an empty split is an error."""
    out = {name: subset(items, n_train if name == "train" else n_eval, seed) for name, items in splits.items()}
    for name, items in out.items():
        if not items:
            raise DataError(f"{source}: split {name!r} is empty; change data.split_ratios or add data")
    return out


def subset(docs: list[Document], n: int | None, seed: int) -> list[Document]:
    if n is None or n >= len(docs):
        return docs
    idx = np.random.default_rng(seed).permutation(len(docs))[:n]
    return [docs[i] for i in sorted(idx)]


# --------------------------------------------------------------------------------------------------
# Labelled texts for sequence classification
# --------------------------------------------------------------------------------------------------

TEXT_SOURCES: Registry[Callable[..., dict[str, list[dict]]]] = Registry("text data format")


def load_texts(path: str | None, fmt: str = "auto", **kw: Any) -> dict[str, list[dict]]:
    """``{split: [{"text": str, "label": str | list[str]}]}``."""
    if not path:
        raise DataError("data.path is not set: give a CSV, JSONL or datasets name/path")
    if fmt == "auto":
        low = path.lower()
        fmt = "csv" if low.endswith((".csv", ".tsv")) else "jsonl" if low.endswith((".jsonl", ".json")) else "hf"
    return TEXT_SOURCES.get(fmt)(path, **kw)


def _rows_to_examples(rows, path: str, text_column: str, label_column: str, multi_label: bool) -> list[dict]:
    out = []
    for n, r in enumerate(rows, start=1):
        if text_column not in r or label_column not in r:
            raise DataError(
                f"{path}: row {n} lacks {text_column!r} or {label_column!r} (has {sorted(r)}); "
                f"set data.text_column / data.label_column"
            )
        label = r[label_column]
        if r[text_column] is None or not str(r[text_column]).strip():
            raise DataError(f"{path}: row {n} has an empty {text_column!r}; fill it or drop the row")
        if label is None or (isinstance(label, str) and not label.strip()):
            raise DataError(f"{path}: row {n} has an empty {label_column!r}; fill it or drop the row")
        if multi_label:
            label = [str(x) for x in label] if isinstance(label, list) else [x for x in str(label).split("|") if x]
        else:
            label = str(label)
        out.append({"text": str(r[text_column]), "label": label})
    if not out:
        raise DataError(f"{path}: no examples")
    return out


@TEXT_SOURCES.register("csv")
def load_csv(path: str, text_column: str = "text", label_column: str = "label", multi_label: bool = False, **_):
    """CSV/TSV with a header; multi-label cells separate labels with '|'."""
    rows = _csv_rows(path)
    return {"train": _rows_to_examples(rows, path, text_column, label_column, multi_label)}


def _csv_rows(path: str) -> list[dict]:
    import io

    reader = csv.DictReader(
        io.StringIO(read_text(path), newline=""), delimiter="\t" if path.lower().endswith(".tsv") else ","
    )
    try:
        return list(reader)
    except csv.Error as exc:
        raise DataError(f"{path}:{reader.line_num}: not valid CSV ({exc})") from None


@TEXT_SOURCES.register("jsonl")
def load_text_jsonl(path: str, text_column: str = "text", label_column: str = "label", multi_label: bool = False, **_):
    rows = [obj for _, obj in jsonl_rows(path)]
    return {"train": _rows_to_examples(rows, path, text_column, label_column, multi_label)}


@TEXT_SOURCES.register("spans")
def load_span_examples(path: str, span_min_chars: int = 1, **_):
    """Clause classification from span JSONL: each span's text is an example labelled with its category."""
    docs = load_span_jsonl(path)["train"]
    out = [
        {"text": d.text[s.start : s.end], "label": s.category}
        for d in docs
        for s in d.spans
        if s.end - s.start >= span_min_chars
    ]
    return {"train": out}


@TEXT_SOURCES.register("span_documents")
def load_span_document_labels(path: str, **_):
    """Document-level multi-label examples from span JSONL: a whole document labelled with the set of
    categories its spans use (e.g. "which clause types does this contract contain"). Same documents in the
    same order as the jsonl document format, so both carve into identical splits."""
    docs = load_span_jsonl(path)["train"]
    return {"train": [{"text": d.text, "label": sorted({s.category for s in d.spans})} for d in docs]}


@TEXT_SOURCES.register("hf")
def load_text_hf(path: str, text_column: str = "text", label_column: str = "label", multi_label: bool = False, **_):
    ds = load_hf_dataset(path)
    out = {}
    for split, d in ds.items():
        feat = d.features.get(label_column)
        names = getattr(feat, "names", None) or getattr(getattr(feat, "feature", None), "names", None)
        rows = []
        for r in d:
            lab = r.get(label_column)
            if names is not None:
                lab = [names[x] for x in lab] if isinstance(lab, list) else names[lab]
            rows.append({text_column: r.get(text_column), label_column: lab})
        out[SPLIT_ALIASES.get(split, split)] = _rows_to_examples(rows, path, text_column, label_column, multi_label)
    return out


def read_documents_for_prediction(source: str, text_field: str = "text") -> Iterator[Document]:
    """A .jsonl of objects with a text field, a plain text file (one document), or a folder of .txt files."""
    p = Path(source)
    if p.is_dir():
        files = sorted(p.rglob("*.txt"))
        if not files:
            raise DataError(f"{source}: no .txt files found")
        for f in files:
            yield Document(read_text(f), [], str(f))
    elif p.suffix.lower() in (".jsonl", ".json"):
        for n, obj in jsonl_rows(p):
            if not isinstance(obj.get(text_field), str):
                raise DataError(f"{source}:{n}: no {text_field!r} string field; set data.text_field")
            yield Document(obj[text_field], [], str(obj.get("id", obj.get("title", n))))
    else:
        yield Document(read_text(p), [], str(p))


def prediction_row(doc: Document, spans: list[tuple[Span, float]]) -> dict[str, Any]:
    """One document's predicted spans as the JSON row ``hf-tune predict`` writes (``text`` is the source slice)."""
    return {
        "id": doc.id,
        "spans": [
            {
                "start": s.start,
                "end": s.end,
                "category": s.category,
                "text": doc.text[s.start : s.end],
                "score": round(score, 6),
            }
            for s, score in spans
        ],
    }


# --------------------------------------------------------------------------------------------------
# Unlabelled texts for masked-LM adaptation
# --------------------------------------------------------------------------------------------------

RAW_TEXT_SOURCES: Registry[Callable[..., dict[str, list[str]]]] = Registry("unlabelled text format")


def load_raw_texts(path: str | None, fmt: str = "auto", **kw: Any) -> dict[str, list[str]]:
    """``{split: [document text]}`` from .txt files/folders, JSONL/CSV text fields or a datasets folder."""
    if not path:
        raise DataError("data.path is not set: give a .txt file or folder, a JSONL/CSV with a text field, or a dataset")
    if fmt == "auto":
        p, low = Path(path), path.lower()
        fmt = (
            "txt"
            if p.is_dir() and not (p / "dataset_dict.json").exists() and not (p / "dataset_info.json").exists()
            else "txt"
            if low.endswith(".txt")
            else "jsonl"
            if low.endswith((".jsonl", ".json"))
            else "csv"
            if low.endswith((".csv", ".tsv"))
            else "hf"
        )
    splits = RAW_TEXT_SOURCES.get(fmt)(path, **kw)
    splits = {name: [t for t in texts if t.strip()] for name, texts in splits.items()}
    if not any(splits.values()):
        raise DataError(f"data.path={path}: no non-empty texts")
    return splits


@RAW_TEXT_SOURCES.register("txt")
def load_txt(path: str, **_: Any) -> dict[str, list[str]]:
    """A .txt file is one document; a folder gives one document per .txt file under it (sorted, recursive)."""
    p = _existing(path)
    files = sorted(p.rglob("*.txt")) if p.is_dir() else [p]
    if not files:
        raise DataError(f"data.path={path}: no .txt files in this folder")
    return {"train": [read_text(f) for f in files]}


def _text_field(rows: Iterator[dict] | list[dict], path: str, text_column: str) -> list[str]:
    out = []
    for n, r in enumerate(rows, start=1):
        if text_column not in r:
            raise DataError(f"{path}: row {n} has no {text_column!r} field (has {sorted(r)}); set data.text_column")
        out.append(str(r[text_column] or ""))
    return out


@RAW_TEXT_SOURCES.register("jsonl")
def load_raw_jsonl(path: str, text_column: str = "text", **_: Any) -> dict[str, list[str]]:
    """Any JSONL with a text field; span JSONL (CUAD) gives its contract texts, spans ignored."""
    return {"train": _text_field([obj for _, obj in jsonl_rows(path)], path, text_column)}


@RAW_TEXT_SOURCES.register("csv")
def load_raw_csv(path: str, text_column: str = "text", **_: Any) -> dict[str, list[str]]:
    return {"train": _text_field(_csv_rows(path), path, text_column)}


@RAW_TEXT_SOURCES.register("hf")
def load_raw_hf(path: str, text_column: str = "text", **_: Any) -> dict[str, list[str]]:
    ds = load_hf_dataset(path)
    return {SPLIT_ALIASES.get(split, split): _text_field(iter(d), path, text_column) for split, d in ds.items()}
