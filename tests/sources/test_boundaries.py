"""Trust boundaries of a source (docs/sources.md, "What a source can reach"): nothing outside the root is read,
whatever the tree holds or becomes while it is read; hidden entries stay hidden through symlinks; git.path stays
inside the checkout; a URL's query never shows."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from config.model import GitSource, shown_url
from vectorstore.sources.readers import (
    DirectoryReader,
    Entry,
    FileProblem,
    GitCloneReader,
    GitSyncReader,
    Rejected,
    SourceError,
)

SECRET = b"OUTSIDE: the server's own file, never to be read\n"


def _tree(tmp_path: Path) -> tuple[Path, Path]:
    """(root, outside): root/a.md, root/sub/b.md, root/link.md -> sub/b.md; outside/ holds files of the same
    names with SECRET in them, so a swap that escaped would read them under inside names."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "a.md").write_text("Alpha inside.\n")
    (root / "sub" / "b.md").write_text("Bravo inside.\n")
    (root / "link.md").symlink_to("sub/b.md")
    for name in ("a.md", "b.md"):
        (outside / name).write_bytes(SECRET)
    return root, outside


def _swap(directory: Path, target: Path) -> None:
    os.rename(directory, directory.with_name(directory.name + ".moved"))
    directory.symlink_to(target)


def _listing(reader: DirectoryReader) -> dict[str, Entry | Rejected]:
    reader.prepare()
    return {item.path if isinstance(item, Entry) else item.path or item.shown: item for item in reader.entries()}


def test_a_directory_swapped_for_a_symlink_between_listing_and_reading_is_not_followed(tmp_path: Path) -> None:
    root, outside = _tree(tmp_path)
    swapped: list[str] = []

    def swap_before_reading(path: str) -> None:
        # The hook runs after the listing and before the open: exactly the window a racing writer uses.
        if not swapped:
            _swap(root / "sub", outside)
            swapped.append(path)

    entries = _listing(DirectoryReader(root, before_read=swap_before_reading))
    assert sorted(entries) == ["a.md", "link.md", "sub/b.md"]
    b = entries["sub/b.md"]
    assert isinstance(b, Entry)
    with pytest.raises(FileProblem, match="became a symlink during the sync"):
        b.read(1 << 20)
    assert swapped == ["sub/b.md"]
    # A symlink inside the root whose target's directory was swapped: refused the same way.
    link = entries["link.md"]
    assert isinstance(link, Entry)
    with pytest.raises(FileProblem, match="became a symlink"):
        link.read(1 << 20)
    # What was not swapped still reads.
    a = entries["a.md"]
    assert isinstance(a, Entry) and a.read(1 << 20) == b"Alpha inside.\n"


def test_a_directory_swapped_between_its_parents_listing_and_its_own_makes_the_listing_incomplete(
    tmp_path: Path,
) -> None:
    root, outside = _tree(tmp_path)
    reader = DirectoryReader(root)
    reader.prepare()
    listing = reader.entries()
    first = next(listing)  # the root is listed (its files yielded) before `sub` is opened
    assert first.path == "a.md"
    _swap(root / "sub", outside)
    with pytest.raises(SourceError, match="changed from a directory while it was read"):
        list(listing)


def test_a_swapped_file_and_the_root_file_types_are_checked_at_open(tmp_path: Path) -> None:
    root, outside = _tree(tmp_path)
    entries = _listing(DirectoryReader(root))
    os.unlink(root / "a.md")
    (root / "a.md").symlink_to(outside / "a.md")
    a = entries["a.md"]
    assert isinstance(a, Entry)
    with pytest.raises(FileProblem, match="became a symlink"):
        a.read(1 << 20)


def test_hidden_entries_stay_hidden_through_symlinks_but_a_configmap_layout_reads(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / ".git").mkdir(parents=True)
    (root / ".git" / "config").write_text('[remote "origin"]\n\turl = https://token@example.com/x.git\n')
    (root / ".env").write_text("API_KEY=sk-never-read\n")
    (root / "env.md").symlink_to(".env")
    (root / "config.md").symlink_to(".git/config")
    (root / "deep.md").symlink_to(root / ".git" / "config")  # absolute, inside the root: still hidden
    # A mounted ConfigMap, as the kubelet lays it out: key -> ..data/key, ..data -> ..<timestamp>/.
    (root / "..2026_01_01_00_00_00.1").mkdir()
    (root / "..2026_01_01_00_00_00.1" / "notes.md").write_text("A ConfigMap key.\n")
    (root / "..data").symlink_to("..2026_01_01_00_00_00.1")
    (root / "notes.md").symlink_to("..data/notes.md")
    entries = _listing(DirectoryReader(root))
    assert sorted(entries) == ["config.md", "deep.md", "env.md", "notes.md"]
    for name, hidden in (("env.md", ".env"), ("config.md", ".git"), ("deep.md", ".git")):
        item = entries[name]
        assert isinstance(item, Rejected) and item.reason == f"a symlink to a hidden entry ({hidden!r}); not followed"
    notes = entries["notes.md"]
    assert isinstance(notes, Entry) and notes.read(1 << 20) == b"A ConfigMap key.\n"


GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "T", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "T",
           "GIT_COMMITTER_EMAIL": "t@example.com", "GIT_CONFIG_NOSYSTEM": "1"}  # fmt: skip


def _repository_with_links(tmp_path: Path, outside: Path) -> str:
    """A bare repository whose commit holds `docs -> <outside>` (absolute), `up -> ../..` and `hidden -> .git`."""
    work, bare = tmp_path / "work", tmp_path / "repo.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], env=GIT_ENV, check=True)
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], env=GIT_ENV, check=True)
    (work / "real").mkdir()
    (work / "real" / "page.md").write_text("A real page.\n")
    (work / "docs").symlink_to(outside)
    (work / "up").symlink_to("../..")
    (work / "hidden").symlink_to(".git")
    for args in (["add", "-A"], ["commit", "-qm", "links"], ["push", "-q", str(bare), "main"]):
        subprocess.run(["git", "-C", str(work), *args], env=GIT_ENV, check=True, capture_output=True)
    return bare.as_uri()


def test_git_path_through_a_committed_symlink_is_not_read(tmp_path: Path) -> None:
    outside = tmp_path / "server-files"
    outside.mkdir()
    (outside / "secret.md").write_bytes(SECRET)
    url = _repository_with_links(tmp_path, outside)
    for subpath, reason in (("docs", "resolves outside the repository"), ("up", "resolves outside the repository"),
                            ("hidden", "a symlink to a hidden entry")):  # fmt: skip
        reader = GitCloneReader(GitSource(url, "main", subpath), tmp_path / f"clone-{subpath}")
        with pytest.raises(SourceError, match=reason):
            reader.prepare()
    reader = GitCloneReader(GitSource(url, "main", "real"), tmp_path / "clone-real")
    reader.prepare()
    assert [item.path for item in reader.entries()] == ["page.md"]

    # The same through git-sync's layout: the checkout the `current` link points to.
    checkout = tmp_path / "clone-real"
    link = tmp_path / "current"
    link.symlink_to(checkout)
    with pytest.raises(SourceError, match="resolves outside the repository"):
        GitSyncReader(GitSource(url, "main", "docs"), link, wait_seconds=0).prepare()
    with pytest.raises(SourceError, match="has an empty"):
        GitSyncReader(GitSource(url, "main", "real/../.."), link, wait_seconds=0).prepare()


def test_urls_are_shown_without_query_or_password() -> None:
    assert shown_url("https://git.example.com/org/wiki.git?private_token=glpat-1") == (
        "https://git.example.com/org/wiki.git?[redacted]"
    )
    assert shown_url("https://oauth2:glpat-2@git.example.com/x.git#frag") == (
        "https://[redacted]@git.example.com/x.git#[redacted]"
    )
    assert shown_url("ssh://git:hunter2@example.com/x.git") == "ssh://git:[redacted]@example.com/x.git"
    assert shown_url("git@example.com:org/x.git") == "git@example.com:org/x.git"
    assert shown_url("https://example.com/x.git") == "https://example.com/x.git"
    # A query or fragment right after the host (no path) is redacted too, and so is userinfo before it.
    assert shown_url("https://git.example.com?private_token=glpat-3") == "https://git.example.com?[redacted]"
    assert shown_url("https://u:glpat-4@minio.example:9000#x") == "https://[redacted]@minio.example:9000#[redacted]"
    assert shown_url("http://minio.example:9000") == "http://minio.example:9000"


def test_a_failed_fetch_never_shows_the_query(tmp_path: Path) -> None:
    location = GitSource("http://127.0.0.1:9/wiki.git?private_token=glpat-q-77", "main", "")
    with pytest.raises(SourceError) as caught:
        GitCloneReader(location, tmp_path / "clone").prepare()
    assert "glpat-q-77" not in str(caught.value) and "?[redacted]" in str(caught.value)


async def test_git_credentials_never_follow_a_redirect_to_another_origin(tmp_path: Path) -> None:
    import asyncio
    import base64

    from aiohttp import web
    from localhttp import serve_locally

    from config import names
    from config.model import GitCredentials, SecretRef
    from sources.githttp import GitHttpServer

    outside = tmp_path / "o"
    outside.mkdir()
    bare = _repository_with_links(tmp_path, outside)
    token = "glpat-redirect-secret-31"
    # The other origin: a public host that serves the repository and records every Authorization header sent
    # to it. (curl itself drops Authorization on a redirect to another host; git's extraHeader it does not.)
    other = await GitHttpServer(Path(bare.removeprefix("file://")).parent, "bot", token, public=True).start()

    async def redirect(request: web.Request) -> web.StreamResponse:
        # Same path, another origin (`localhost` and another port): what a hostile or hijacked server answers.
        raise web.HTTPFound(f"http://localhost:{other.port}{request.path_qs}")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", redirect)
    runner, port = await serve_locally(app)
    try:
        refs = {key: SecretRef("git-token", key, names.source_secret_env("git-token", key)) for key in ("u", "p")}
        credentials = GitCredentials(username=refs["u"], password=refs["p"])
        location = GitSource(f"http://127.0.0.1:{port}/repo.git", "main", "real", credentials)
        environ = {refs["u"].env: "bot", refs["p"].env: token}
        reader = GitCloneReader(location, tmp_path / "clone", environ)
        with pytest.raises(SourceError) as caught:
            await asyncio.to_thread(reader.prepare)
        assert token not in str(caught.value)
        sent = "Basic " + base64.b64encode(f"bot:{token}".encode()).decode()
        assert sent not in other.authorizations, "the credentials reached another origin"
    finally:
        await runner.cleanup()
        await other.close()
