"""Intrinsic evaluation of word vectors: word-pair similarity (WordSim-353, SimLex-999) and analogies.

Similarities are cosines; rank correlations come from `beam_rnn.core.metrics`.
Lookups are case-insensitive, like gensim's.
"""

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from beam_rnn.core.metrics import pearson, spearman
from beam_rnn.embeddings.layout import ANALOGY_FILE, SIMLEX_FILE, WORDSIM_FILE


class WordVectors:
    """Words + vectors in rank order (first = most frequent) with a lookup index."""

    def __init__(self, words: Sequence[str], vectors: np.ndarray, *, lowercase: bool = True) -> None:
        self.words = list(words)
        self.vectors = np.asarray(vectors, dtype=np.float32)
        self.index: dict[str, int] = {}
        for i, w in enumerate(self.words):
            self.index.setdefault(w.lower() if lowercase else w, i)
        self.lowercase = lowercase
        norms = np.linalg.norm(self.vectors, axis=1, keepdims=True)
        self.unit = self.vectors / np.maximum(norms, 1e-12)

    @classmethod
    def of(cls, vectors: "WordVectors | Mapping[str, np.ndarray] | tuple") -> "WordVectors":
        if isinstance(vectors, WordVectors):
            return vectors
        if isinstance(vectors, tuple):
            return cls(vectors[0], vectors[1])
        words = list(vectors.keys())
        return cls(words, np.stack([np.asarray(vectors[w]) for w in words]) if words else np.zeros((0, 0)))

    def key(self, word: str) -> str:
        return word.lower() if self.lowercase else word

    def get(self, word: str) -> int | None:
        return self.index.get(self.key(word))


def read_word_pairs(path: str) -> list[tuple[str, str, float]]:
    """WordSim-353 / SimLex-999 files: "w1<TAB>w2<TAB>score", '#' lines are comments."""
    pairs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split("\t") if "\t" in line else line.split()
            pairs.append((parts[0], parts[1], float(parts[2])))
    return pairs


def evaluate_word_pairs(vectors, pairs: str | Sequence[tuple[str, str, float]]) -> dict[str, Any]:
    """Spearman (and Pearson) between human scores and cosine similarity.

    Pairs with a word missing from the vectors are left out (case-insensitive
    lookup, like gensim); `coverage` = pairs covered / total.
    """
    wv = WordVectors.of(vectors)
    if isinstance(pairs, str):
        pairs = read_word_pairs(pairs)
    human, model = [], []
    for a, b, score in pairs:
        ia, ib = wv.get(a), wv.get(b)
        if ia is None or ib is None:
            continue
        human.append(score)
        model.append(float(np.dot(wv.unit[ia], wv.unit[ib])))
    total = len(pairs)
    return {
        "spearman": spearman(human, model) if len(human) >= 2 else float("nan"),
        "pearson": pearson(human, model) if len(human) >= 2 else float("nan"),
        "pairs_covered": len(human),
        "pairs_total": total,
        "coverage": len(human) / total if total else 0.0,
    }


def read_analogies(path: str) -> list[tuple[str, str, str, str, str]]:
    """Google analogy file → (section, a, b, c, d) with ": section" headers."""
    out = []
    section = ""
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            if line.startswith(":"):
                section = line[1:].strip()
                continue
            a, b, c, d = line.split()[:4]
            out.append((section, a, b, c, d))
    return out


def evaluate_analogies(
    vectors,
    questions: str | Sequence[tuple[str, str, str, str, str]],
    *,
    restrict_vocab: int | None = None,
    chunk: int = 1024,
) -> dict[str, Any]:
    """3CosAdd accuracy on a:b :: c:d questions.

    The answer is argmax over the (top `restrict_vocab`) words of
    cos(x, b) - cos(x, a) + cos(x, c), excluding a, b and c themselves.  Only
    questions whose 4 words are all among the candidate words count
    ("covered"); accuracy = correct / covered, coverage = covered / total.
    Sections whose name starts with "gram" are syntactic, the others semantic
    (the Google set's convention).
    """
    wv = WordVectors.of(vectors)
    if isinstance(questions, str):
        questions = read_analogies(questions)
    limit = len(wv.words) if restrict_vocab is None else min(int(restrict_vocab), len(wv.words))
    unit = wv.unit[:limit]
    rows = []
    for q in questions:
        idx = [wv.get(w) for w in q[1:]]
        if all(i is not None and i < limit for i in idx):
            rows.append((q[0], idx))
    correct = np.zeros(len(rows), dtype=bool)
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        ids = np.asarray([r[1] for r in part], dtype=np.int64)
        query = unit[ids[:, 1]] - unit[ids[:, 0]] + unit[ids[:, 2]]
        sims = query @ unit.T
        r = np.arange(len(part))
        for j in range(3):
            sims[r, ids[:, j]] = -np.inf
        correct[start : start + len(part)] = sims.argmax(axis=1) == ids[:, 3]
    sections: dict[str, dict[str, int]] = {}
    for q in questions:
        sections.setdefault(q[0], {"correct": 0, "covered": 0, "total": 0})["total"] += 1
    for (sec, _), ok in zip(rows, correct):
        sections[sec]["covered"] += 1
        sections[sec]["correct"] += int(ok)

    def summary(names: Iterable[str]) -> dict[str, Any]:
        c = sum(sections[n]["correct"] for n in names)
        cov = sum(sections[n]["covered"] for n in names)
        tot = sum(sections[n]["total"] for n in names)
        return {"accuracy": c / cov if cov else 0.0, "correct": c, "covered": cov, "total": tot,
                "coverage": cov / tot if tot else 0.0}

    result = summary(sections)
    result["semantic"] = summary([s for s in sections if not s.startswith("gram")])
    result["syntactic"] = summary([s for s in sections if s.startswith("gram")])
    result["restrict_vocab"] = limit
    result["sections"] = {s: {**v, "accuracy": v["correct"] / v["covered"] if v["covered"] else 0.0}
                          for s, v in sections.items()}
    return result


def evaluate_embeddings(vectors, eval_dir: str, *, restrict_vocab: int | None = None) -> dict[str, Any]:
    """WordSim-353, SimLex-999 and analogy results for the files present in `eval_dir`."""
    wv = WordVectors.of(vectors)
    out: dict[str, Any] = {}
    for name, fname in (("wordsim353", WORDSIM_FILE), ("simlex999", SIMLEX_FILE)):
        path = os.path.join(eval_dir, fname)
        if os.path.exists(path):
            out[name] = evaluate_word_pairs(wv, path)
    path = os.path.join(eval_dir, ANALOGY_FILE)
    if os.path.exists(path):
        res = evaluate_analogies(wv, path, restrict_vocab=restrict_vocab)
        res.pop("sections")
        out["analogy"] = res
    return out
