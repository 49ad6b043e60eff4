"""The Cranfield collection (../shared/datasets/cranfield, REFERENCE §8) and the two measures reported on it.

`cran.all.1400` holds 1,400 abstracts in SMART format, `cran.qry` 225 queries, `cranqrel` graded judgments
`query document grade`. Queries are numbered 1..225 in file order (their `.I` numbers skip), grade 1 is the
best and 4 the least relevant; -1 marks a document of no interest and counts as not relevant. Gain for nDCG
is 5 - grade (4 for a complete answer .. 1 for minimal interest), the usual mapping.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cranfield"


@dataclass(frozen=True)
class Document:
    id: str
    title: str
    text: str

    @property
    def body(self) -> str:
        """What is indexed: the title, then the abstract (which in this collection usually repeats it)."""
        return f"{self.title}\n\n{self.text}".strip()


@dataclass(frozen=True)
class Collection:
    documents: list[Document]
    queries: list[str]
    """queries[i] is query number i + 1."""
    judgments: dict[int, dict[str, int]]
    """query number -> document id -> gain (1..4); only relevant documents."""

    def judged_queries(self) -> list[int]:
        return [number for number in range(1, len(self.queries) + 1) if self.judgments.get(number)]


def _fields(block: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for match in re.finditer(r"^\.([A-Z])\n(.*?)(?=^\.[A-Z]\n|\Z)", block, flags=re.M | re.S):
        fields[match.group(1)] = " ".join(match.group(2).split())
    return fields


def _records(text: str) -> list[tuple[str, dict[str, str]]]:
    records = []
    for block in re.split(r"^\.I ", text, flags=re.M)[1:]:
        head, _, rest = block.partition("\n")
        records.append((head.strip(), _fields(rest)))
    return records


def load(directory: Path = DEFAULT_DIR) -> Collection:
    documents = [
        Document(str(int(number)), fields.get("T", ""), fields.get("W", ""))
        for number, fields in _records((directory / "cran.all.1400").read_text(encoding="utf-8", errors="replace"))
    ]
    queries = [fields.get("W", "") for _, fields in _records((directory / "cran.qry").read_text(encoding="utf-8"))]
    judgments: dict[int, dict[str, int]] = {}
    for line in (directory / "cranqrel").read_text().splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        query, document, grade = int(parts[0]), str(int(parts[1])), int(parts[2])
        if 1 <= grade <= 4:
            judgments.setdefault(query, {})[document] = 5 - grade
    return Collection(documents, queries, judgments)


def ndcg_at(ranked: Sequence[str], gains: Mapping[str, int], k: int = 10) -> float:
    """nDCG@k with exponential-free gains (gain / log2(rank + 1)), ideal from all judged documents."""
    dcg = sum(gains.get(doc, 0) / math.log2(rank + 2) for rank, doc in enumerate(ranked[:k]))
    ideal = sorted(gains.values(), reverse=True)[:k]
    idcg = sum(gain / math.log2(rank + 2) for rank, gain in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def recall_at(ranked: Sequence[str], gains: Mapping[str, int], k: int = 100) -> float:
    relevant = set(gains)
    return len(relevant & set(ranked[:k])) / len(relevant) if relevant else 0.0
