"""Text out of an uploaded file: plain text, Markdown, HTML, JSON, CSV, source code and PDF.

Everything else is refused with `UnsupportedFile` rather than guessed at: embedding the bytes of a zip or
an image as if they were text would fill a store with noise that still scores. Each failure names what is
wrong and where (byte offset, line:column, page), because it ends up in `last_error.message`, the only
thing a person uploading a folder of documents sees.
"""

from __future__ import annotations

import codecs
import io
import json
import re
from html.parser import HTMLParser
from pathlib import PurePosixPath
from typing import Final, Literal

Kind = Literal["text", "markdown", "html", "json", "jsonl", "csv", "code", "pdf"]

# OpenAI's `last_error.code` values for a vector store file (spec 2.3.0).
ErrorCode = Literal["unsupported_file", "invalid_file", "server_error"]


class ExtractError(Exception):
    """The file cannot become text; `code` and `message` go to the vector store file's `last_error`."""

    code: ErrorCode = "invalid_file"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnsupportedFile(ExtractError):
    code: ErrorCode = "unsupported_file"


class InvalidFile(ExtractError):
    code: ErrorCode = "invalid_file"


_TEXT: Final = {".txt", ".text", ".log", ".rst", ".adoc", ".org", ".tex", ".srt", ".vtt"}
_MARKDOWN: Final = {".md", ".markdown", ".mdx"}
_HTML: Final = {".html", ".htm", ".xhtml"}
_CSV: Final = {".csv", ".tsv"}
_CODE: Final = {
    ".py", ".pyi", ".js", ".mjs", ".cjs", ".ts", ".tsx", ".jsx", ".java", ".kt", ".kts", ".scala", ".go", ".rs",
    ".c", ".h", ".cc", ".cpp", ".cxx", ".hpp", ".hh", ".cs", ".fs", ".swift", ".m", ".mm", ".rb", ".php", ".pl",
    ".pm", ".lua", ".r", ".jl", ".dart", ".ex", ".exs", ".erl", ".hs", ".ml", ".clj", ".sh", ".bash", ".zsh",
    ".fish", ".ps1", ".bat", ".sql", ".css", ".scss", ".sass", ".less", ".vue", ".svelte", ".xml", ".yaml",
    ".yml", ".toml", ".ini", ".cfg", ".conf", ".properties", ".env", ".gradle", ".cmake", ".proto", ".graphql",
    ".tf", ".hcl", ".nix", ".dockerfile", ".mk", ".diff", ".patch",
}  # fmt: skip
_CODE_NAMES: Final = {"makefile", "dockerfile", "containerfile", "jenkinsfile", "readme", "license", "changelog"}

_CONTENT_TYPES: Final[dict[str, Kind]] = {
    "text/plain": "text",
    "text/markdown": "markdown",
    "text/x-markdown": "markdown",
    "text/html": "html",
    "application/xhtml+xml": "html",
    "application/json": "json",
    "application/x-ndjson": "jsonl",
    "application/jsonl": "jsonl",
    "text/csv": "csv",
    "text/tab-separated-values": "csv",
    "application/pdf": "pdf",
    "application/xml": "code",
    "text/xml": "code",
    "application/javascript": "code",
    "application/x-yaml": "code",
    "application/yaml": "code",
    "application/x-sh": "code",
}


def detect_kind(filename: str, content_type: str | None = None) -> Kind:
    """What a file is, from its name first (clients often send application/octet-stream), then its type."""
    path = PurePosixPath(filename.replace("\\", "/"))
    suffix = path.suffix.lower()
    if suffix in _TEXT:
        return "text"
    if suffix in _MARKDOWN:
        return "markdown"
    if suffix in _HTML:
        return "html"
    if suffix == ".json":
        return "json"
    if suffix in {".jsonl", ".ndjson"}:
        return "jsonl"
    if suffix in _CSV:
        return "csv"
    if suffix == ".pdf":
        return "pdf"
    if suffix in _CODE or path.name.lower() in _CODE_NAMES:
        return "code"
    media = (content_type or "").split(";")[0].strip().lower()
    if media in _CONTENT_TYPES:
        return _CONTENT_TYPES[media]
    if media.startswith("text/"):
        return "text"
    shown = f"{suffix!r}" if suffix else "no extension"
    raise UnsupportedFile(
        f"{filename!r}: unsupported file type ({shown}, content type {media or 'none'}); "
        "supported: text, Markdown, HTML, JSON, CSV, source code and PDF"
    )


def extract_text(data: bytes, filename: str, content_type: str | None = None) -> str:
    """The text to chunk and embed. Raises `ExtractError` with a reason people can act on."""
    kind = detect_kind(filename, content_type)
    if not data:
        raise InvalidFile(f"{filename!r} is empty (0 bytes)")
    if kind == "pdf":
        text = _pdf_text(data, filename)
    else:
        raw = _decode(data, filename)
        if kind == "html":
            text = html_to_text(raw)
        elif kind == "json":
            _check_json(raw, filename)
            text = raw
        elif kind == "jsonl":
            _check_jsonl(raw, filename)
            text = raw
        else:
            text = raw
    if not text.strip():
        raise InvalidFile(f"{filename!r} contains no text")
    return text


def _decode(data: bytes, filename: str) -> str:
    # A BOM is the one reliable signal of UTF-16; without one, text must be UTF-8 (as OpenAI requires).
    for bom, encoding in (
        (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if data.startswith(bom):
            try:
                return data.decode(encoding)
            except UnicodeDecodeError as error:
                raise InvalidFile(f"{filename!r} is not valid {encoding} at byte {error.start}") from None
    nul = data.find(b"\x00", 0, 1 << 16)
    if nul >= 0:
        raise InvalidFile(f"{filename!r} looks binary, not text (NUL byte at offset {nul})")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise InvalidFile(
            f"{filename!r} is not valid UTF-8 (byte {error.start}, line {line}: {error.reason})"
        ) from None
    if _control_ratio(text) > 0.1:
        raise InvalidFile(f"{filename!r} looks binary, not text (mostly control characters)")
    return text


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _control_ratio(text: str) -> float:
    sample = text[:65536]
    return len(_CONTROL.findall(sample)) / max(1, len(sample))


def _check_json(text: str, filename: str) -> None:
    try:
        json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidFile(
            f"{filename!r} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})"
        ) from None
    except RecursionError:
        # Nested deeper than Python's parser recurses: JSON allows it, and the text is searchable as it is.
        pass


def _check_jsonl(text: str, filename: str) -> None:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            json.loads(line)
        except json.JSONDecodeError as error:
            raise InvalidFile(
                f"{filename!r} line {number} is not valid JSON (column {error.colno}: {error.msg})"
            ) from None
        except RecursionError:
            continue  # as in _check_json


def _pdf_text(data: bytes, filename: str) -> str:
    import logging

    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    if not data.lstrip()[:5].startswith(b"%PDF-"):
        raise InvalidFile(f"{filename!r} is not a PDF (no %PDF- header)")
    # pypdf logs every recoverable defect of a damaged file as a warning; the outcome is what matters here.
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            raise InvalidFile(f"{filename!r} is an encrypted PDF")
        pages: list[str] = []
        for number, page in enumerate(reader.pages, start=1):
            try:
                pages.append(page.extract_text() or "")
            except Exception as error:  # pypdf raises many types on damaged content streams
                raise InvalidFile(f"{filename!r}: PDF page {number} could not be read ({error})") from None
    except ExtractError:
        raise
    except RecursionError:
        raise InvalidFile(f"{filename!r}: the PDF's structure is nested too deeply to read") from None
    except MemoryError:
        raise InvalidFile(f"{filename!r}: the PDF needs more memory to read than a file may use") from None
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError, OSError) as error:
        # PyPdfError covers every error of pypdf's own (PdfReadError, LimitReachedError on a deep page tree...):
        # all say the file is bad, none is worth another try.
        raise InvalidFile(f"{filename!r} is a corrupt PDF ({error or type(error).__name__})") from None
    text = "\n\n".join(page.strip() for page in pages if page.strip())
    if not text:
        raise InvalidFile(f"{filename!r}: the PDF has no extractable text (scanned pages need OCR first)")
    return text


_BLOCK: Final = {
    "address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt", "figcaption", "figure", "footer",
    "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main", "nav", "ol", "p", "pre", "section",
    "table", "tr", "ul", "title", "td", "th",
}  # fmt: skip
_PARAGRAPHS: Final = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article", "table", "pre", "blockquote"}
_PARAGRAPH: Final = "\x1e"  # a marker for "blank line here", resolved after all text is in
_SKIP: Final = {"script", "style", "noscript", "template", "head"}


class _TextParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0
        self._in_title = False
        self._pre = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in _SKIP:
            self._skipping += 1
        elif tag in _BLOCK:
            self.parts.append(_PARAGRAPH if tag in _PARAGRAPHS else "\n")
            self._pre += tag == "pre"

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
            self.parts.append(_PARAGRAPH)
        elif tag in _SKIP:
            self._skipping = max(0, self._skipping - 1)
        elif tag in _BLOCK:
            self.parts.append(_PARAGRAPH if tag in _PARAGRAPHS else "\n")
            self._pre = max(0, self._pre - (tag == "pre"))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in {"br", "hr"}:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        # The <title> sits inside <head>, which is otherwise skipped; it is worth keeping.
        if self._in_title or not self._skipping:
            # Outside <pre>, HTML source line breaks are just spaces; structure comes from the tags.
            self.parts.append(data if self._pre else re.sub(r"\s+", " ", data))


def html_to_text(html: str) -> str:
    """Visible text of an HTML document: scripts and styles dropped, blocks on their own lines."""
    parser = _TextParser()
    parser.feed(html)
    parser.close()
    text = "".join(parser.parts)
    text = re.sub(r"[ \t\r\f\v]*\n[ \t\r\f\v\n]*", "\n", text)
    text = re.sub(r"\s*\x1e[\s\x1e]*", "\n\n", text)
    return text.strip()
