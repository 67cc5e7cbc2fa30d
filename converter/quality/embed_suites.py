"""The built-in suites of `qconv eval` on an embedding model: sentences per capability, whose vectors under the
candidate and the reference are compared one by one (cosine similarity), and a retrieval suite of query/passage
pairs, where each query's partner must be its nearest passage.

All texts are our own writing, in converter/quality/suites/: embed_<name>.txt (one text per line) and
embed_retrieval.json (pairs grouped by topic, four per topic, plus one near-miss distractor per topic: a passage
on the same subject that answers none of the topic's questions, so that a query has to find its answer among
passages that share its words, not only its subject).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).parent / "suites"
RETRIEVAL = "retrieval"


@dataclass(frozen=True)
class EmbedSuite:
    """Texts whose vectors are compared. A retrieval suite's texts are its queries then its passages (partners
    first, then distractors); partner[i] is the passage index of query i's partner."""

    name: str
    description: str
    texts: tuple[str, ...]
    n_queries: int = 0  # retrieval: texts[:n_queries] are the queries, the rest the passages
    partner: tuple[int, ...] = ()

    @property
    def is_retrieval(self) -> bool:
        return self.n_queries > 0

    @property
    def queries(self) -> tuple[str, ...]:
        return self.texts[: self.n_queries]

    @property
    def passages(self) -> tuple[str, ...]:
        return self.texts[self.n_queries :]

    def source(self, index: int) -> str:
        """How the report names a text: 'prose#3', 'retrieval#q12' / 'retrieval#p40' (1-based)."""
        if not self.is_retrieval:
            return f"{self.name}#{index + 1}"
        if index < self.n_queries:
            return f"{self.name}#q{index + 1}"
        return f"{self.name}#p{index - self.n_queries + 1}"

    @property
    def sha256(self) -> str:
        """The texts (and the pairing), hashed: what a reference cache of this suite's vectors is valid for."""
        digest = hashlib.sha256(json.dumps([self.texts, self.n_queries, self.partner]).encode("utf-8"))
        return digest.hexdigest()


SENTENCE_SUITES = {
    "prose": "everyday English sentences: news, places, people, weather",
    "code": "code one-liners in a dozen languages, shell commands and docstrings",
    "multilingual": "short sentences in 25 languages and 10 scripts (Latin, Cyrillic, Greek, CJK, Hangul, Arabic, "
    "Hebrew, Devanagari)",
    "queries": "short search-engine queries, lower case, no punctuation",
}


def _lines(path: Path) -> tuple[str, ...]:
    lines = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return tuple(line for line in lines if line)


def sentence_suite(name: str) -> EmbedSuite:
    return EmbedSuite(name, SENTENCE_SUITES[name], _lines(HERE / f"embed_{name}.txt"))


def retrieval_suite() -> EmbedSuite:
    record = json.loads((HERE / f"embed_{RETRIEVAL}.json").read_text(encoding="utf-8"))
    pairs, distractors = record["pairs"], record["distractors"]
    queries = tuple(p["query"] for p in pairs)
    passages = tuple(p["passage"] for p in pairs) + tuple(d["passage"] for d in distractors)
    description = (
        f"{len(queries)} questions, each to find its answer among {len(passages)} passages "
        f"({len(distractors)} near-miss distractors) by cosine similarity"
    )
    return EmbedSuite(RETRIEVAL, description, queries + passages, len(queries), tuple(range(len(pairs))))


EMBED_SUITES = (*SENTENCE_SUITES, RETRIEVAL)


def get_embed_suites(names: list[str] | None = None) -> list[EmbedSuite]:
    """The named suites in the table's order (all without names)."""
    wanted = set(names) if names else set(EMBED_SUITES)
    return [retrieval_suite() if n == RETRIEVAL else sentence_suite(n) for n in EMBED_SUITES if n in wanted]
