"""Text extraction for each supported kind, and a clear reason for every file that cannot be read."""

from __future__ import annotations

import json
import os

import pytest

from ingest.pdfs import make_pdf
from vectorstore.ingest.extract import (
    ExtractError,
    InvalidFile,
    UnsupportedFile,
    detect_kind,
    extract_text,
    html_to_text,
)


def test_plain_markdown_code_csv_keep_text() -> None:
    assert extract_text("héllo\nworld\n".encode(), "a.txt") == "héllo\nworld\n"
    assert extract_text(b"# Title\n\nBody", "README.md") == "# Title\n\nBody"
    assert "def f" in extract_text(b"def f():\n    return 1\n", "m.py")
    assert extract_text(b"a,b\n1,2\n", "t.csv") == "a,b\n1,2\n"
    assert extract_text(b"all: build\n", "Makefile") == "all: build\n"


def test_kind_from_content_type_when_name_says_nothing() -> None:
    assert detect_kind("upload", "text/plain; charset=utf-8") == "text"
    assert detect_kind("upload", "application/pdf") == "pdf"
    assert detect_kind("data.bin", "text/x-rst") == "text"
    # The name wins over a generic type, since clients send octet-stream for anything.
    assert detect_kind("notes.md", "application/octet-stream") == "markdown"


def test_bom_and_utf16() -> None:
    assert extract_text("\ufeffhello".encode(), "a.txt") == "hello"
    assert extract_text("hello wörld".encode("utf-16"), "a.txt") == "hello wörld"


def test_html_drops_scripts_and_styles_keeps_structure() -> None:
    html = """<html><head><title>Doc</title><style>p{color:red}</style>
    <script>var secret = 1;</script></head><body><h1>Heading</h1><p>First &amp; para.</p>
    <p>Second<br>line</p><noscript>nojs</noscript><ul><li>one</li><li>two</li></ul></body></html>"""
    text = extract_text(html.encode(), "page.html")
    assert "secret" not in text and "color" not in text and "nojs" not in text
    assert text.startswith("Doc")
    assert "Heading\n\nFirst & para.\n\nSecond\nline" in text
    assert "one\ntwo" in text
    assert html_to_text("<div>a</div><div>b</div>") == "a\nb"


def test_json_and_jsonl_validated() -> None:
    data = json.dumps({"k": ["v", 1]})
    assert extract_text(data.encode(), "x.json") == data
    with pytest.raises(InvalidFile, match=r"line 2, column"):
        extract_text(b'{"a": 1,\n oops}', "x.json")
    with pytest.raises(InvalidFile, match="line 2 is not valid JSON"):
        extract_text(b'{"a": 1}\n{bad\n', "x.jsonl")


def test_json_nested_deeper_than_the_parser_recurses_is_text_not_a_crash() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    assert extract_text(deep.encode(), "deep.json") == deep
    text = extract_text(f'{{"a": 1}}\n{deep}\n'.encode(), "deep.jsonl")
    assert text.startswith('{"a": 1}') and deep in text


def test_pdf_text_across_pages() -> None:
    pdf = make_pdf([["The first page says hello."], ["Page two talks about vectors.", "And a second line."]])
    text = extract_text(pdf, "doc.pdf")
    assert "The first page says hello." in text
    assert "Page two talks about vectors." in text
    assert text.index("hello") < text.index("vectors")


@pytest.mark.parametrize(
    ("data", "name", "error", "reason"),
    [
        (b"", "empty.txt", InvalidFile, "is empty"),
        (b"   \n\t\n", "blank.md", InvalidFile, "contains no text"),
        (os.urandom(4096) + b"\x00", "garbage.txt", InvalidFile, "binary|UTF-8"),
        (b"\x00\x01\x02\x03binary", "nul.txt", InvalidFile, r"NUL byte at offset 0"),
        (b"good line\nbad \xff\xfe here", "latin.txt", InvalidFile, r"not valid UTF-8 \(byte 14, line 2"),
        (b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog garbage", "broken.pdf", InvalidFile, "corrupt PDF|no extractable"),
        (b"this is not a pdf", "fake.pdf", InvalidFile, "not a PDF"),
        (make_pdf([[]]), "blank.pdf", InvalidFile, "no extractable text"),
        (b"PK\x03\x04zipdata", "archive.zip", UnsupportedFile, r"unsupported file type \('\.zip'"),
        (b"\x89PNG\r\n", "image.png", UnsupportedFile, "unsupported file type"),
        (b"data", "noext", UnsupportedFile, "no extension"),
        (b"\x01\x02\x03\x04\x05\x06\x07\x08 x" * 20, "ctrl.txt", InvalidFile, "control characters"),
    ],
)
def test_bad_files_have_clear_reasons(data: bytes, name: str, error: type[ExtractError], reason: str) -> None:
    with pytest.raises(error, match=reason) as caught:
        extract_text(data, name)
    assert caught.value.code == ("unsupported_file" if error is UnsupportedFile else "invalid_file")
    assert name in caught.value.message


def test_truncated_pdf_is_invalid_not_a_crash() -> None:
    pdf = make_pdf([["Some text on a page that will be cut."]])
    for cut in (20, len(pdf) // 2, len(pdf) - 30):
        try:
            text = extract_text(pdf[:cut], "cut.pdf")
        except InvalidFile:
            continue
        # pypdf may recover a cut file; then what it gives back must be the real text.
        assert "Some text" in text
