"""Chunking: exact token limits, bounded overlap, full coverage in order, natural boundaries.

The properties are checked over many generated documents (seeded, so a failure reproduces) rather than a
few hand-picked strings: prose, one long line with no boundaries, CJK and emoji (multi-byte characters
whose tokens can end mid-character), code, and whitespace-heavy text.
"""

from __future__ import annotations

import itertools
import random

import pytest

from vectorstore.ingest.chunking import Chunk, chunk_text, count_tokens
from vectorstore.storage.strategy import AUTO, ChunkingError, Strategy, parse_strategy

WORDS = [
    "the", "vector", "store", "keeps", "every", "chunk", "of", "text", "close", "to", "its", "meaning",
    "and", "returns", "it", "when", "asked",
]  # fmt: skip


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(4, 25))]
    return " ".join(words).capitalize() + rng.choice([".", ".", "!", "?"])


def _prose(rng: random.Random, paragraphs: int) -> str:
    return "\n\n".join(" ".join(_sentence(rng) for _ in range(rng.randint(1, 8))) for _ in range(paragraphs))


def _documents() -> list[tuple[str, str]]:
    rng = random.Random(1234)
    docs = [
        ("prose", _prose(rng, 60)),
        ("one-line", "".join(rng.choice("abcdefghij0123456789+/") for _ in range(30000))),
        ("cjk-emoji", "".join(rng.choice(["向量", "数据库", "検索", "🙂", "🚀", "é", " ", "。"]) for _ in range(8000))),
        ("code", "\n".join(f"def f{i}(x):\n    return x * {i}  # multiply\n" for i in range(700))),
        ("whitespace", "\n\n\n".join("   word   \t  " * rng.randint(1, 30) for _ in range(200))),
        ("short", "Just one sentence."),
        ("special", "<|endoftext|> is text here. " * 400),
    ]
    return docs


def _check(text: str, chunks: list[Chunk], strategy: Strategy) -> None:
    assert chunks, "non-empty text gives at least one chunk"
    for chunk in chunks:
        assert chunk.text == text[chunk.start : chunk.end]
        assert chunk.tokens == count_tokens(chunk.text)
        assert 0 < chunk.tokens <= strategy.max_chunk_size_tokens
    assert [c.index for c in chunks] == list(range(len(chunks)))
    # Coverage in order: starts and ends strictly increase, and there is no gap between chunks.
    assert text[: chunks[0].start].strip() == ""
    assert text[chunks[-1].end :].strip() == ""
    for before, after in itertools.pairwise(chunks):
        assert before.start < after.start <= before.end < after.end
        shared = text[after.start : before.end]
        assert count_tokens(shared) <= strategy.chunk_overlap_tokens
    # Stitching the chunks back together minus their overlaps gives the text back.
    stitched = chunks[0].text + "".join(a.text[b.end - a.start :] for b, a in itertools.pairwise(chunks))
    assert stitched == text[chunks[0].start : chunks[-1].end]


STRATEGIES = [AUTO, Strategy(100, 0), Strategy(100, 50), Strategy(257, 31), Strategy(4096, 2048)]


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: f"{s.max_chunk_size_tokens}-{s.chunk_overlap_tokens}")
@pytest.mark.parametrize(("name", "text"), _documents(), ids=[name for name, _ in _documents()])
def test_chunk_properties(name: str, text: str, strategy: Strategy) -> None:
    _check(text, list(chunk_text(text, strategy)), strategy)


def test_overlap_is_used_when_asked() -> None:
    text = _prose(random.Random(7), 40)
    chunks = list(chunk_text(text, Strategy(200, 100)))
    shared = [count_tokens(text[a.start : b.end]) for b, a in itertools.pairwise(chunks)]
    assert len(chunks) > 5
    # Snapping to a sentence start may give up at most half of the overlap.
    assert min(shared) >= 50, shared


def test_breaks_at_paragraphs_when_they_exist() -> None:
    rng = random.Random(3)
    text = _prose(rng, 80)
    chunks = list(chunk_text(text, Strategy(300, 0)))
    assert len(chunks) > 5
    for chunk in chunks[:-1]:
        assert (
            chunk.text.endswith("\n\n")
            or text[chunk.end : chunk.end + 2] == "\n\n"
            or chunk.text.endswith((".", "!", "?"))
        ), repr(chunk.text[-40:])
    # Most cuts land on a paragraph break, not merely a sentence end.
    paragraph_cuts = sum("\n\n" in text[c.end - 2 : c.end + 2] for c in chunks[:-1])
    assert paragraph_cuts >= len(chunks[:-1]) * 0.6


def test_sentence_breaks_without_paragraphs() -> None:
    text = " ".join(_sentence(random.Random(i)) for i in range(400))
    chunks = list(chunk_text(text, Strategy(150, 0)))
    assert len(chunks) > 5
    assert all(chunk.text.rstrip().endswith((".", "!", "?")) for chunk in chunks[:-1])


def test_small_text_is_one_chunk_and_whitespace_none() -> None:
    assert [c.text for c in chunk_text("  hello world  \n")] == ["hello world"]
    assert list(chunk_text(" \n\t ")) == []


def test_auto_is_800_400_and_reported_as_static() -> None:
    assert parse_strategy({"type": "auto"}) == Strategy(800, 400)
    assert parse_strategy(None, default=Strategy(300, 10)) == Strategy(300, 10)
    assert parse_strategy({"type": "auto"}).to_api() == {
        "type": "static",
        "static": {"max_chunk_size_tokens": 800, "chunk_overlap_tokens": 400},
    }


@pytest.mark.parametrize(
    ("value", "param"),
    [
        (
            {"type": "static", "static": {"max_chunk_size_tokens": 99, "chunk_overlap_tokens": 0}},
            "max_chunk_size_tokens",
        ),
        (
            {"type": "static", "static": {"max_chunk_size_tokens": 4097, "chunk_overlap_tokens": 0}},
            "max_chunk_size_tokens",
        ),
        (
            {"type": "static", "static": {"max_chunk_size_tokens": 200, "chunk_overlap_tokens": 101}},
            "chunk_overlap_tokens",
        ),
        (
            {"type": "static", "static": {"max_chunk_size_tokens": 200, "chunk_overlap_tokens": -1}},
            "chunk_overlap_tokens",
        ),
        (
            {"type": "static", "static": {"max_chunk_size_tokens": "200", "chunk_overlap_tokens": 0}},
            "max_chunk_size_tokens",
        ),
        ({"type": "static"}, "chunking_strategy.static"),
        ({"type": "fancy"}, "chunking_strategy.type"),
        ("auto", "chunking_strategy"),
    ],
)
def test_invalid_strategies_name_the_field(value: object, param: str) -> None:
    with pytest.raises(ChunkingError) as caught:
        parse_strategy(value)
    assert caught.value.param.endswith(param)


def test_static_limits_accepted() -> None:
    assert parse_strategy({"type": "static", "static": {"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 50}}) == (
        Strategy(100, 50)
    )
    assert parse_strategy(
        {"type": "static", "static": {"max_chunk_size_tokens": 4096, "chunk_overlap_tokens": 2048}}
    ) == Strategy(4096, 2048)


def test_litellm_shape_is_static_in_tokens() -> None:
    """LiteLLM's /v1/rag/ingest forwards its own `{chunk_size, chunk_overlap}` as the chunking_strategy."""
    assert parse_strategy({"chunk_size": 500, "chunk_overlap": 100}) == Strategy(500, 100)
    # A field left out takes LiteLLM's default (1000 and 200), the overlap capped at half the size.
    assert parse_strategy({"chunk_size": 300}) == Strategy(300, 150)
    assert parse_strategy({"chunk_size": 500}) == Strategy(500, 200)
    assert parse_strategy({"chunk_overlap": 0}) == Strategy(1000, 0)
    assert parse_strategy({"chunk_size": 4096, "chunk_overlap": 2048}).to_api() == {
        "type": "static",
        "static": {"max_chunk_size_tokens": 4096, "chunk_overlap_tokens": 2048},
    }


@pytest.mark.parametrize(
    ("value", "param"),
    [
        ({"chunk_size": 99, "chunk_overlap": 0}, "chunking_strategy.chunk_size"),
        ({"chunk_size": 4097}, "chunking_strategy.chunk_size"),
        ({"chunk_size": 200, "chunk_overlap": 101}, "chunking_strategy.chunk_overlap"),
        ({"chunk_size": 200, "chunk_overlap": -1}, "chunking_strategy.chunk_overlap"),
        ({"chunk_size": "200"}, "chunking_strategy.chunk_size"),
        ({"chunk_size": True}, "chunking_strategy.chunk_size"),
        ({"chunk_overlap": "10"}, "chunking_strategy.chunk_overlap"),
        ({"chunk_size": 200, "separators": ["\n"]}, "chunking_strategy.separators"),
    ],
)
def test_invalid_litellm_shapes_name_the_field(value: object, param: str) -> None:
    with pytest.raises(ChunkingError) as caught:
        parse_strategy(value)
    assert caught.value.param == param
    # The field is named as the caller spelt it, never in OpenAI's words.
    assert param.rsplit(".", 1)[1] in caught.value.message


@pytest.mark.parametrize("value", [{"type": "fancy"}, {}, "auto", ["chunk_size", 200], {"size": 200}])
def test_unknown_shapes_name_both_accepted_shapes(value: object) -> None:
    """LiteLLM turns our 400 into a 200 `failed`: the message in its log must tell the operator what works."""
    with pytest.raises(ChunkingError) as caught:
        parse_strategy(value)
    message = caught.value.message
    assert '{"type": "static", "static": {"max_chunk_size_tokens": N, "chunk_overlap_tokens": M}}' in message
    assert '{"chunk_size": N, "chunk_overlap": M}' in message
