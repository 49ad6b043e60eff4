"""A `git` source against a real repository on 127.0.0.1 (a bare repository over file://): commits that add,
change and delete files; a failed fetch; and the git-sync checkout layout render produces in Kubernetes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import aiohttp
from fakeembed import FakeEmbedder

from config import names
from config.model import GitCredentials, GitSource, SecretRef
from sources.conftest import STORE_ID, attachments, start_with_sources, sync_again, wait_synced

GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(directory: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(directory), *args], env=GIT_ENV, capture_output=True, text=True, check=True)
    return done.stdout.strip()


class Repository:
    """A bare repository (what the server fetches) and a working copy the test commits from."""

    def __init__(self, root: Path) -> None:
        self.bare = root / "wiki.git"
        self.work = root / "work"
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(self.bare)], env=GIT_ENV, check=True)
        subprocess.run(["git", "init", "-q", "-b", "main", str(self.work)], env=GIT_ENV, check=True)
        git(self.work, "remote", "add", "origin", self.bare.as_uri())

    @property
    def url(self) -> str:
        return self.bare.as_uri()

    def commit(self, files: dict[str, str | None], message: str) -> str:
        """Write (or delete, for None) files under the working copy, commit and push; the new commit's hash."""
        for name, text in files.items():
            path = self.work / name
            if text is None:
                git(self.work, "rm", "-q", name)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            git(self.work, "add", name)
        git(self.work, "commit", "-q", "-m", message)
        git(self.work, "push", "-q", "origin", "main")
        return git(self.work, "rev-parse", "HEAD")


def _first_commit(repo: Repository) -> None:
    repo.commit(
        {
            "docs/intro.md": "Intro to the wiki: welcome, readers.\n",
            "docs/howto/deploy.md": "Deploy with kubectl apply.\n",
            "docs/old.md": "An old page about the legacy system.\n",
            "README.md": "Outside docs/: not part of the source.\n",
        },
        "first",
    )


async def test_commits_that_add_change_and_delete_files(
    fresh_dsn: str, fake_embedder: FakeEmbedder, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    repo = Repository(tmp_path)
    _first_commit(repo)
    source = {"name": "wiki", "git": {"repo": repo.url, "ref": "main", "path": "docs"}}
    server = await start_with_sources(fake_embedder, fresh_dsn, tmp_path / "spec.yaml", [source])
    try:
        (status,) = await wait_synced(http, server)
        assert status["type"] == "git" and status["location"] == f"{repo.url}@main:docs"
        assert sorted(row["filename"] for row in attachments(fresh_dsn)) == ["howto/deploy.md", "intro.md", "old.md"]
        # The server's own clone, shallow, beside the spec (never inside the repository under test).
        clone = tmp_path / "clones" / "git" / names.source_hash(STORE_ID, "wiki")
        assert git(clone, "rev-parse", "--is-shallow-repository") == "true"

        repo.commit(
            {"docs/intro.md": "Intro, rewritten.\n", "docs/new.md": "A new page.\n", "docs/old.md": None}, "second"
        )
        fake_embedder.calls.clear()
        (result,) = await sync_again(server, http)
        outcome = result.sources[0]
        assert (outcome.added, outcome.updated, outcome.deleted, outcome.unchanged) == (1, 1, 1, 1), outcome
        assert sorted(fake_embedder.inputs) == ["A new page.", "Intro, rewritten."]
        rows = attachments(fresh_dsn)
        assert sorted(row["filename"] for row in rows) == ["howto/deploy.md", "intro.md", "new.md"]
        assert {row["attributes"]["source"] for row in rows} == {"wiki"}

        fake_embedder.calls.clear()
        (result,) = await sync_again(server, http)  # nothing new upstream: nothing read into the store
        assert result.sources[0].changes == 0 and fake_embedder.calls == []
    finally:
        await server.stop()


async def test_a_failed_fetch_is_an_error_and_deletes_nothing(
    fresh_dsn: str, fake_embedder: FakeEmbedder, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    repo = Repository(tmp_path)
    _first_commit(repo)
    source = {"name": "wiki", "git": {"repo": repo.url, "ref": "main", "path": "docs"}}
    server = await start_with_sources(fake_embedder, fresh_dsn, tmp_path / "spec.yaml", [source])
    try:
        await wait_synced(http, server)
        before = attachments(fresh_dsn)
        os.rename(repo.bare, tmp_path / "gone.git")  # the remote is unreachable
        (result,) = await sync_again(server, http)
        assert "git fetch" in str(result.sources[0].error) and result.sources[0].deleted == 0
        assert attachments(fresh_dsn) == before
    finally:
        await server.stop()


async def test_a_missing_ref_or_directory_is_an_error(
    fresh_dsn: str, fake_embedder: FakeEmbedder, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    repo = Repository(tmp_path)
    _first_commit(repo)
    sources = [
        {"name": "no-branch", "git": {"repo": repo.url, "ref": "release-9"}},
        {"name": "no-dir", "git": {"repo": repo.url, "ref": "main", "path": "manuals"}},
    ]
    server = await start_with_sources(fake_embedder, fresh_dsn, tmp_path / "spec.yaml", sources)
    try:
        branch, directory = await wait_synced(http, server)
        assert branch["status"] == "failed" and "release-9" in branch["last_sync"]["error"]
        assert directory["status"] == "failed" and "no directory 'manuals'" in directory["last_sync"]["error"]
        assert attachments(fresh_dsn) == []
    finally:
        await server.stop()


def _git_sync_layout(repo: Repository, checkouts: Path, commit: str) -> Path:
    """What git-sync leaves in a checkout volume: `root/.worktrees/<hash>` and the `root/current` link to it."""
    volume = Path(names.git_checkout_volume_dir(str(checkouts), STORE_ID, "wiki"))
    worktree = volume / names.GIT_SYNC_ROOT / ".worktrees" / commit
    subprocess.run(["git", "clone", "-q", repo.url, str(worktree)], env=GIT_ENV, check=True)
    link = Path(names.git_checkout_path(str(checkouts), STORE_ID, "wiki"))
    link.symlink_to(worktree)
    return link


async def test_in_kubernetes_the_server_reads_the_git_sync_checkout(
    fresh_dsn: str, fake_embedder: FakeEmbedder, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    repo = Repository(tmp_path)
    _first_commit(repo)
    checkouts = tmp_path / "checkouts"
    source = {"name": "wiki", "git": {"repo": repo.url, "ref": "main", "path": "docs"}}
    settings = {"git_checkouts": str(checkouts), "git_sync_wait_seconds": 0.2}
    server = await start_with_sources(fake_embedder, fresh_dsn, tmp_path / "spec.yaml", [source], settings)
    try:
        (status,) = await wait_synced(http, server)
        # No checkout yet (git-sync still cloning): an error, and the server ran no git of its own.
        assert status["status"] == "failed" and "git-sync has not published" in status["last_sync"]["error"]
        assert not (tmp_path / "clones").exists()
        _git_sync_layout(repo, checkouts, git(repo.work, "rev-parse", "HEAD"))
        (result,) = await sync_again(server, http)
        assert result.sources[0].added == 3
        assert sorted(row["filename"] for row in attachments(fresh_dsn)) == ["howto/deploy.md", "intro.md", "old.md"]
    finally:
        await server.stop()


async def test_a_private_repository_over_https_with_credentials_from_the_secret(
    fresh_dsn: str, fake_embedder: FakeEmbedder, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    import base64
    import dataclasses

    from sources.githttp import GitHttpServer
    from vectorstore.sources.service import SYNCER

    repo = Repository(tmp_path)
    _first_commit(repo)
    token = "glpat-secret-token-4c1e9a"
    forge = await GitHttpServer(tmp_path, "bot", token).start()
    env = {
        names.source_secret_env("wiki-token", names.GIT_USERNAME_KEY): "bot",
        names.source_secret_env("wiki-token", names.GIT_PASSWORD_KEY): token,
    }
    # http:// here because the forge is on 127.0.0.1 without TLS; the spec requires https:// for credentials.
    url = f"{forge.base_url}/wiki.git"
    source = {"name": "wiki", "git": {"repo": url, "ref": "main", "path": "docs"}}
    server = await start_with_sources(
        fake_embedder, fresh_dsn, tmp_path / "spec.yaml", [source], {"source_env": env}, interval="0"
    )
    try:
        (status,) = await wait_synced(http, server)
        # Declared without credentials (as the spec must, for http://): the forge refuses, git never prompts.
        assert status["status"] == "failed" and "git fetch" in status["last_sync"]["error"]

        syncer = server.app[SYNCER]
        location = syncer.spec.stores[0].sources[0].location
        assert isinstance(location, GitSource)

        credentials = GitCredentials(
            username=SecretRef("wiki-token", "username", names.source_secret_env("wiki-token", "username")),
            password=SecretRef("wiki-token", "password", names.source_secret_env("wiki-token", "password")),
        )
        store = syncer.spec.stores[0]
        with_credentials = dataclasses.replace(
            store.sources[0], location=dataclasses.replace(location, credentials=credentials)
        )
        syncer.spec = dataclasses.replace(
            syncer.spec, stores=(dataclasses.replace(store, sources=(with_credentials,)), *syncer.spec.stores[1:])
        )
        (result,) = await sync_again(server, http)
        assert result.sources[0].error is None and result.sources[0].added == 3
        expected = "Basic " + base64.b64encode(f"bot:{token}".encode()).decode()
        assert expected in forge.authorizations

        # A wrong token: the error names the fetch, never the token; nothing is deleted.
        syncer.context = dataclasses.replace(syncer.context, environ={**env, credentials.password.env: "wrong-token-7"})
        (result,) = await sync_again(server, http)
        error = str(result.sources[0].error)
        assert "git fetch" in error and "wrong-token-7" not in error and token not in error
        assert result.sources[0].deleted == 0 and len(attachments(fresh_dsn)) == 3

        syncer.context = dataclasses.replace(syncer.context, environ={})
        (result,) = await sync_again(server, http)
        assert credentials.username.env in str(result.sources[0].error)
    finally:
        await server.stop()
        await forge.close()


async def test_a_branch_emptied_of_its_files_is_held(
    fresh_dsn: str, fake_embedder: FakeEmbedder, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    repo = Repository(tmp_path)
    _first_commit(repo)
    source = {"name": "wiki", "git": {"repo": repo.url, "ref": "main", "path": "docs"}}
    server = await start_with_sources(fake_embedder, fresh_dsn, tmp_path / "spec.yaml", [source])
    try:
        await wait_synced(http, server)
        assert len(attachments(fresh_dsn)) == 3
        # A force-push that leaves docs/ with nothing the source reads (only a hidden file keeps the directory).
        repo.commit({"docs/intro.md": None, "docs/howto/deploy.md": None, "docs/old.md": None,
                     "docs/.keep": ""}, "empty the docs")  # fmt: skip
        (result,) = await sync_again(server, http)
        assert result.sources[0].error is None
        assert result.sources[0].held == {"would_delete": 3, "files": 3, "max_delete": "50%"}
        assert len(attachments(fresh_dsn)) == 3
    finally:
        await server.stop()
