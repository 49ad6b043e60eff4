"""The `include` / `exclude` globs of a source: validated by `vectorstore validate`, matched by the server.

Both sides use this one translation, so a glob the validator accepts means the same thing when a sync runs.
Paths are relative to the source root, with `/` between directories:

- `*` matches any characters within one directory level, `?` one character, `[abc]` / `[a-z]` / `[!abc]` one
  character of (or not of) a set;
- `**` as a whole segment matches any number of directory levels, none included: `**/*.md` matches
  `a.md` and `x/y/a.md`, `docs/**` everything under `docs/`.

Matching is case-sensitive, like the file systems and object stores the paths come from.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache


class GlobError(ValueError):
    """A glob that can't mean anything useful; the message says why and how to write it."""


def _segment(segment: str, pattern: str) -> str:
    out: list[str] = []
    i = 0
    n = len(segment)
    while i < n:
        char = segment[i]
        if char == "*":
            if segment[i : i + 2] == "**":
                raise GlobError(f"`**` must be a whole path segment, as in `docs/**/*.md` (in {pattern!r})")
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            j = i + 1
            if j < n and segment[j] in "!^":
                j += 1
            if j < n and segment[j] == "]":
                j += 1  # a `]` right after the opening bracket is part of the set
            while j < n and segment[j] != "]":
                j += 1
            if j >= n:
                raise GlobError(f"unclosed `[` in {pattern!r}; write `[[]` for a literal `[`")
            body = segment[i + 1 : j]
            negate = body[:1] in ("!", "^")
            if negate:
                body = body[1:]
            body = body.replace("\\", "\\\\").replace("[", "\\[")
            if body.startswith("^"):
                body = "\\" + body
            out.append(f"[^/{body}]" if negate else f"[{body}]")
            i = j
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out)


@lru_cache(maxsize=1024)
def glob_regex(pattern: str) -> str:
    """The regular expression (anchored by the caller) a glob stands for; GlobError if it is not valid."""
    if not pattern:
        raise GlobError("a glob can't be empty; `**` matches every file")
    if pattern.startswith("/"):
        raise GlobError(f"{pattern!r} is absolute; globs are relative to the source root, as in `docs/**`")
    if pattern.endswith("/"):
        raise GlobError(f"{pattern!r} ends with `/`; globs match files: write `{pattern}**` for everything under it")
    parts: list[str] = []
    segments = pattern.split("/")
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment in ("", ".", ".."):
            raise GlobError(f"{pattern!r} has an empty, `.` or `..` segment; globs stay inside the source root")
        if segment == "**":
            parts.append(".*" if last else "(?:[^/]+/)*")
        else:
            parts.append(_segment(segment, pattern) + ("" if last else "/"))
    regex = "".join(parts)
    try:
        re.compile(regex)
    except re.error as exc:
        raise GlobError(f"{pattern!r} is not a valid glob ({exc.msg})") from None
    return regex


def check_glob(pattern: str) -> str | None:
    """None when the glob is valid, else the reason."""
    try:
        glob_regex(pattern)
    except GlobError as exc:
        return str(exc)
    return None


class Matcher:
    """Whether a relative path is selected: it matches an `include` glob and no `exclude` glob."""

    def __init__(self, include: Iterable[str], exclude: Iterable[str] = ()) -> None:
        self._include = self._union(include)
        self._exclude = self._union(exclude)

    @staticmethod
    def _union(patterns: Iterable[str]) -> re.Pattern[str] | None:
        regexes = [glob_regex(pattern) for pattern in patterns]
        if not regexes:
            return None
        return re.compile("|".join(f"(?:{regex})" for regex in regexes), re.DOTALL)

    def matches(self, path: str) -> bool:
        if self._include is None or self._include.fullmatch(path) is None:
            return False
        return self._exclude is None or self._exclude.fullmatch(path) is None
