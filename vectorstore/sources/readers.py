"""Reading a source: a directory, a git checkout or an S3 bucket, as a stream of files opened lazily.

Every reader is blocking code (the file system, `git`, boto3); the sync engine runs it in a thread, one batch
of entries at a time, so a source of any size is never listed into memory at once and no file is read until
the engine decides it must be (its fingerprint changed).

The guard against deleting documents by mistake lives here (docs/sources.md, "When a source can't be read"):
a reader either lists the *whole* source or raises `SourceError`. A missing or unreadable root, a directory
that can't be listed halfway through, a failed clone or fetch, an unreachable bucket or refused credentials:
each is a `SourceError`, and the engine then deletes nothing. A listing is complete only when the generator
returns normally; only then does the engine delete the paths it did not see (under its deletion brake).

The trust boundary lives here too (docs/sources.md, "What a source can reach"): a directory is walked by
descriptors, never by full paths, so nothing swapped in while it is read leads out of the root; hidden entries
are not read, not even through a symlink; `git.path` must resolve inside the checkout.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import logging
import os
import stat
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from config import names
from config.model import GitSource, PathSource, S3Source, Source, shown_url

log = logging.getLogger("vectorstore")

GIT_TIMEOUT_SECONDS = 300.0
"""A fetch that takes longer is abandoned (and retried at the next interval)."""
GIT_SYNC_WAIT_SECONDS = 60.0
"""How long the server waits for git-sync's first checkout before calling the source unreadable."""
# Transports `git` may use for a source: never `ext::` (runs a command) or other helpers.
GIT_ALLOWED_PROTOCOLS = "file:git:http:https:ssh"


class SourceError(Exception):
    """The source as a whole can't be read: nothing is deleted, the sync is retried at the next interval."""


class FileProblem(Exception):
    """One file can't be read or taken in; the rest of the sync goes on."""


@dataclass(frozen=True)
class Entry:
    """One file of a source: its relative path (`/`-separated, valid UTF-8, inside the root), its size, a
    fingerprint that changes whenever its content may have (size and mtime, or the S3 ETag), and `read`."""

    path: str
    size: int
    fingerprint: str
    read: Callable[[int], bytes]
    """Blocking: the content, at most `limit` bytes, else FileProblem."""


@dataclass(frozen=True)
class Rejected:
    """A listed name the sync must not take: `path` is None when the name can't even be stored."""

    path: str | None
    shown: str
    reason: str


Listed = Entry | Rejected


class Reader(Protocol):
    def prepare(self) -> None:
        """Make the source readable (clone, fetch, connect); SourceError if it can't be."""

    def entries(self) -> Iterator[Listed]:
        """Every file, streamed; raises SourceError if the listing can't be completed."""


@dataclass(frozen=True)
class Context:
    """What readers need beyond the spec: where relative paths start, where clones go, what env holds."""

    base_dir: Path
    """Directory relative `path`s are resolved against: the spec file's directory."""
    work_dir: Path
    """Where the server keeps its own git clones (outside Kubernetes)."""
    git_checkouts: str | None = None
    """Set in Kubernetes (render's env): git-sync keeps the checkouts here and the server never runs git."""
    environ: Mapping[str, str] | None = None
    """Where S3 credentials are read from (their env vars come from config.names)."""
    git_sync_wait_seconds: float = GIT_SYNC_WAIT_SECONDS


def printable(name: str) -> str:
    """A file name as people can read it: undecodable bytes and control characters escaped."""
    raw = os.fsencode(name)
    text = raw.decode("utf-8", errors="backslashreplace")
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def _valid_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def hidden_component(parts: Sequence[str]) -> str | None:
    """The first hidden name among `parts`, the rule of docs/sources.md ("Hidden entries"): a name starting with
    `.` is hidden, except a name starting with `..` *reached through a symlink*: the kubelet's own layout of a
    mounted ConfigMap (`key -> ..data/key`, `..data -> ..2024_01_01_...`), which holds nothing but the keys."""
    return next((part for part in parts if part.startswith(".") and not part.startswith("..")), None)


_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _NOFOLLOW | _CLOEXEC
# O_NONBLOCK: a file swapped for a FIFO can't hang the sync (it fails the S_ISREG check instead).
_FILE_FLAGS = os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW | _CLOEXEC


class Swapped(Exception):
    """A component of a path below the root is no longer a directory (swapped for a symlink or a file)."""


def open_beneath(real_root: str, parts: Sequence[str], *, directory: bool) -> int:
    """A descriptor of root/parts[0]/.../parts[-1], opened one component at a time from the root's descriptor
    with O_NOFOLLOW: no component may be a symlink, so whatever is swapped in the tree meanwhile, the file opened
    is below the root (docs/sources.md, "Nothing is followed out of the root"). The caller closes it."""
    descriptor = os.open(real_root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _CLOEXEC)
    try:
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            flags = _FILE_FLAGS if last and not directory else _DIRECTORY_FLAGS
            try:
                opened = os.open(part, flags, dir_fd=descriptor)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise Swapped("/".join(parts[: index + 1])) from None
                raise
            os.close(descriptor)
            descriptor = opened
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


ReadHook = Callable[[str], None]


class DirectoryReader:
    """A directory tree, walked by directory descriptors: hidden entries (`.git`, `.env`) skipped, symlinks followed
    only to files inside the root that are not hidden, nothing but regular files read."""

    def __init__(
        self,
        root: Path,
        *,
        must_have_files: bool = False,
        mount_point: bool = False,
        before_read: ReadHook | None = None,
    ) -> None:
        self.root = root
        self.must_have_files = must_have_files
        """An empty listing is an error (a directory a sidecar has not filled yet), not an empty source."""
        self.mount_point = mount_point
        """The root is declared as a mounted volume: unless it is a mount point, it is not mounted (and an empty
        directory underneath must not be believed)."""
        self.before_read = before_read
        """Tests only: called with a file's relative path just before it is opened (a swap hook)."""

    def prepare(self) -> None:
        try:
            info = os.stat(self.root)
        except FileNotFoundError:
            raise SourceError(f"directory {self.root} does not exist (not mounted, or a wrong `path`)") from None
        except OSError as exc:
            raise SourceError(f"can't read {self.root}: {exc.strerror}") from None
        if not stat.S_ISDIR(info.st_mode):
            raise SourceError(f"{self.root} is not a directory")
        if self.mount_point and not is_mount_point(self.root):
            raise SourceError(
                f"{self.root} is declared as a mounted volume but nothing is mounted there; nothing is deleted "
                "until it is"
            )
        try:
            with os.scandir(self.root):
                pass
        except OSError as exc:
            raise SourceError(f"can't list {self.root}: {exc.strerror}") from None

    def entries(self) -> Iterator[Listed]:
        real_root = os.path.realpath(self.root)
        count = 0
        # Depth first with an explicit stack: no recursion limit, and one directory's names in memory at a time
        # per level (what a directory holds, never the whole tree). Each directory is opened again from the root,
        # one component at a time, never by its full path: a directory swapped for a symlink is not entered.
        stack: list[tuple[str, ...]] = [()]
        while stack:
            parts = stack.pop()
            shown = printable("/".join(parts)) or "."
            try:
                descriptor = open_beneath(real_root, parts, directory=True)
                try:
                    with os.scandir(descriptor) as scan:
                        items = sorted(item.name for item in scan)
                    subdirectories: list[tuple[str, ...]] = []
                    listed: list[Listed] = []
                    for name in items:
                        if name.startswith("."):
                            continue
                        relative = "/".join((*parts, name))
                        if not _valid_utf8(name):
                            listed.append(
                                Rejected(None, printable(relative), "the name is not valid UTF-8; not synced")
                            )
                            continue
                        entry = self._entry(descriptor, real_root, parts, name, relative)
                        if entry is None:
                            subdirectories.append((*parts, name))
                        else:
                            listed.append(entry)
                finally:
                    os.close(descriptor)
            except Swapped as swapped:
                # A directory became a symlink (or a file) since its parent was listed: the listing is not
                # complete, so nothing may be deleted; the next sync sees what it has become.
                raise SourceError(
                    f"{printable(str(swapped))!r} in {self.root} changed from a directory while it was read; "
                    "nothing deleted, read again at the next sync"
                ) from None
            except OSError as exc:
                # A directory we can't list makes the listing incomplete: deleting what we did not see could
                # delete documents that are still there.
                raise SourceError(f"can't list directory {shown!r} in {self.root}: {exc.strerror}") from None
            count += len(listed)
            yield from listed
            stack.extend(reversed(subdirectories))
        if count == 0 and self.must_have_files:
            raise SourceError(
                f"{self.root} is empty: the volume has not been filled yet; nothing is deleted until it is"
            )

    def _entry(self, directory: int, real_root: str, parts: tuple[str, ...], name: str, relative: str) -> Listed | None:
        """The file `name` in the open `directory`, a Rejected, or None for a directory to descend into."""
        try:
            info = os.stat(name, dir_fd=directory, follow_symlinks=False)
            if stat.S_ISLNK(info.st_mode):
                return self._link(real_root, parts, name, relative)
        except FileNotFoundError:
            return Rejected(relative, relative, "can't be read: it vanished or points to nothing (a dangling symlink)")
        except OSError as exc:
            return Rejected(relative, relative, f"can't be read: {exc.strerror}")
        if stat.S_ISDIR(info.st_mode):
            return None
        return self._file(real_root, (*parts, name), relative, info)

    def _link(self, real_root: str, parts: tuple[str, ...], name: str, relative: str) -> Listed:
        target = os.path.realpath(os.path.join(real_root, *parts, name))
        if target == real_root:
            return Rejected(relative, relative, "a symlink to a directory; not followed")
        if not _within(target, real_root):
            return Rejected(relative, relative, "a symlink to outside the source root; not followed")
        target_parts = tuple(os.path.relpath(target, real_root).split(os.sep))
        hidden = hidden_component(target_parts)
        if hidden is not None:
            return Rejected(relative, relative, f"a symlink to a hidden entry ({printable(hidden)!r}); not followed")
        try:
            descriptor = open_beneath(real_root, target_parts, directory=False)
        except IsADirectoryError:
            return Rejected(relative, relative, "a symlink to a directory; not followed")
        except Swapped:
            return Rejected(relative, relative, "its target changed while it was read; not followed")
        try:
            info = os.fstat(descriptor)
        finally:
            os.close(descriptor)
        if stat.S_ISDIR(info.st_mode):
            return Rejected(relative, relative, "a symlink to a directory; not followed")
        return self._file(real_root, target_parts, relative, info)

    def _file(self, real_root: str, parts: tuple[str, ...], relative: str, info: os.stat_result) -> Listed:
        if not stat.S_ISREG(info.st_mode):
            return Rejected(relative, relative, "not a regular file (a pipe, socket or device); not read")
        hook = self.before_read

        def read(limit: int) -> bytes:
            if hook is not None:
                hook(relative)
            return _read_file(real_root, parts, limit)

        return Entry(relative, info.st_size, f"{info.st_size}:{info.st_mtime_ns}", read)


def is_mount_point(path: Path) -> bool:
    """Whether something is mounted at `path`: its device differs from its parent's (or it is `/`)."""
    real = os.path.realpath(path)
    parent = os.path.dirname(real)
    if parent == real:
        return True
    try:
        return os.stat(real).st_dev != os.stat(parent).st_dev or os.path.ismount(real)
    except OSError:
        return False


def _read_file(real_root: str, parts: Sequence[str], limit: int) -> bytes:
    try:
        descriptor = open_beneath(real_root, parts, directory=False)
    except Swapped:
        raise FileProblem("it, or a directory above it, became a symlink during the sync; not followed") from None
    except OSError as exc:
        raise FileProblem(f"can't be read: {exc.strerror}") from None
    with os.fdopen(descriptor, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise FileProblem("not a regular file; not read")
        try:
            data = handle.read(limit + 1)
        except OSError as exc:
            raise FileProblem(f"can't be read: {exc.strerror}") from None
    if len(data) > limit:
        raise FileProblem(f"larger than the limit of {limit} bytes (server.max_upload_bytes)")
    return data


def _git_path(root: Path, location: GitSource, where: str) -> Path:
    """The directory `git.path` names, which must lie inside the checkout once resolved: a repository that commits
    `docs -> /etc` must not make the server's own files searchable."""
    if not location.path:
        return root
    parts = location.path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise SourceError(f"git.path {location.path!r} has an empty, `.` or `..` segment; not read")
    real_root = os.path.realpath(root)
    directory = os.path.realpath(root / location.path)
    if not _within(directory, real_root):
        raise SourceError(
            f"git.path {location.path!r} resolves outside the repository (a symlink in it, {where}); "
            "not read, nothing deleted"
        )
    resolved = os.path.relpath(directory, real_root).split(os.sep)
    hidden = hidden_component(resolved)
    if resolved != parts and hidden is not None:
        raise SourceError(
            f"git.path {location.path!r} is a symlink to a hidden entry ({hidden!r}, {where}); not read, "
            "nothing deleted"
        )
    if not os.path.isdir(directory):
        raise SourceError(f"the repository has no directory {location.path!r} at {location.ref} ({where})")
    return Path(directory)


class GitCloneReader:
    """Outside Kubernetes: the server fetches the repository itself with `git`, shallow, into its data directory,
    and reads the checkout. One directory per source, reused (only what changed is fetched)."""

    def __init__(self, location: GitSource, directory: Path, environ: Mapping[str, str] | None = None) -> None:
        self.location = location
        self.directory = directory
        self.environ = environ if environ is not None else {}
        self._reader: DirectoryReader | None = None

    @property
    def shown(self) -> str:
        return shown_url(self.location.repo)

    def scrub(self, text: str) -> str:
        """git's own messages quote the URL: shown as `shown_url` shows it, never its query or password."""
        repo = self.location.repo
        text = text.replace(repo, self.shown).replace(repo.rstrip("/"), self.shown.rstrip("/"))
        _, _, query = repo.partition("?")
        return text.replace(query, "[redacted]") if query else text

    def _credentials(self) -> dict[str, str]:
        """`git.credentials` as an Authorization header for this repository's URL only, passed in git's env
        (GIT_CONFIG_*): never on a command line, in a file or in a URL that could reach a log. git sends an
        extraHeader with every request of the fetch, redirected ones too: with credentials, redirects are not
        followed at all (`http.followRedirects=false`), so the header never reaches another origin."""
        credentials = self.location.credentials
        if credentials is None:
            return {}
        missing = [ref.env for ref in (credentials.username, credentials.password) if not self.environ.get(ref.env)]
        if missing:
            raise SourceError(
                f"the credentials of {self.shown} from Secret {credentials.username.secret!r} are not set: "
                f"{', '.join(missing)} (keys `{names.GIT_USERNAME_KEY}` and `{names.GIT_PASSWORD_KEY}`)"
            )
        pair = f"{self.environ[credentials.username.env]}:{self.environ[credentials.password.env]}"
        header = "Authorization: Basic " + base64.b64encode(pair.encode()).decode()
        return {
            "GIT_CONFIG_COUNT": "2",
            "GIT_CONFIG_KEY_0": f"http.{self.location.repo}.extraHeader",
            "GIT_CONFIG_VALUE_0": header,
            "GIT_CONFIG_KEY_1": "http.followRedirects",
            "GIT_CONFIG_VALUE_1": "false",
        }

    def _git(self, *args: str) -> None:
        # The user's own git setup (credential helpers, SSH agent) applies; the server's secrets don't go along.
        inherited = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("VECTORSTORE_") and key not in ("PGPASSWORD", "DATABASE_URL")
        }
        env = {
            **inherited,
            "GIT_TERMINAL_PROMPT": "0",  # never wait for a password on a terminal nobody watches
            "GIT_ALLOW_PROTOCOL": GIT_ALLOWED_PROTOCOLS,
            "GIT_CONFIG_NOSYSTEM": "1",
            **self._credentials(),
        }
        try:
            subprocess.run(
                ["git", "-C", str(self.directory), *args],
                env=env,
                capture_output=True,
                timeout=GIT_TIMEOUT_SECONDS,
                check=True,
                stdin=subprocess.DEVNULL,
            )
        except FileNotFoundError:
            raise SourceError(
                "the `git` command is not installed; install git, or run in Kubernetes (git-sync)"
            ) from None
        except subprocess.TimeoutExpired:
            raise SourceError(f"git {args[0]} of {self.shown} took longer than {GIT_TIMEOUT_SECONDS:.0f}s") from None
        except subprocess.CalledProcessError as exc:
            lines = [line for line in exc.stderr.decode(errors="replace").splitlines() if line.strip()]
            detail = self.scrub("; ".join(lines[-2:]) or f"exit {exc.returncode}")
            raise SourceError(f"git {args[0]} of {self.shown} ({self.location.ref}) failed: {detail}") from None

    def prepare(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if not (self.directory / ".git").exists():
            self._git("init", "-q")
        # The spec may have changed the repository: point `origin` at what it says now.
        self._git("config", "remote.origin.url", self.location.repo)
        self._git("fetch", "-q", "--depth", "1", "--no-tags", "origin", self.location.ref)
        self._git("checkout", "-q", "--force", "--detach", "FETCH_HEAD")
        self._git("clean", "-q", "-ffdx")
        self._reader = DirectoryReader(_git_path(self.directory, self.location, "fetched with git"))
        self._reader.prepare()

    def entries(self) -> Iterator[Listed]:
        assert self._reader is not None, "prepare() first"
        return self._reader.entries()


class GitSyncReader:
    """In Kubernetes: git-sync (a sidecar render adds) keeps the checkout; the server only reads it.

    The checkout is resolved once per sync (git-sync swaps its `current` link atomically, and keeps the old
    worktree for a while: render passes `--stale-worktree-timeout`), so one sync reads one commit.
    """

    def __init__(self, location: GitSource, link: Path, *, wait_seconds: float = GIT_SYNC_WAIT_SECONDS) -> None:
        self.location = location
        self.link = link
        self.wait_seconds = wait_seconds
        self._reader: DirectoryReader | None = None

    def prepare(self) -> None:
        deadline = time.monotonic() + self.wait_seconds
        while not self.link.exists():
            if time.monotonic() >= deadline:
                raise SourceError(
                    f"git-sync has not published a checkout of {shown_url(self.location.repo)} "
                    f"({self.location.ref}) at {self.link} yet: see the git-sync container's log"
                )
            time.sleep(1.0)
        worktree = Path(os.path.realpath(self.link))
        self._reader = DirectoryReader(_git_path(worktree, self.location, "git-sync checkout"))
        self._reader.prepare()

    def entries(self) -> Iterator[Listed]:
        assert self._reader is not None, "prepare() first"
        return self._reader.entries()


class S3Reader:
    """An S3-compatible bucket through boto3 (in the engine's thread). ETags spare downloads of unchanged objects;
    the content hash still decides whether a file changed."""

    def __init__(self, location: S3Source, environ: Mapping[str, str]) -> None:
        self.location = location
        self.environ = environ
        self._client: Any = None
        self._secrets: list[str] = []

    @property
    def where(self) -> str:
        endpoint = self.location.endpoint or "AWS"
        return f"s3://{self.location.bucket}/{self.location.prefix} at {endpoint}"

    def _fail(self, exc: Exception) -> SourceError:
        return SourceError(f"{self.where}: {self.scrub(describe_s3_error(exc))}")

    def scrub(self, text: str) -> str:
        """Never a key in a message: it ends up in logs, `last_error` and the status endpoint."""
        for secret in self._secrets:
            if secret:
                text = text.replace(secret, "[redacted]")
        return text

    def prepare(self) -> None:
        import boto3
        from botocore.config import Config

        options: dict[str, Any] = {"region_name": self.location.region}
        credentials = self.location.credentials
        if credentials is not None:
            missing = [
                ref.env
                for ref in (credentials.access_key_id, credentials.secret_access_key)
                if not self.environ.get(ref.env)
            ]
            if missing:
                raise SourceError(
                    f"{self.where}: the credentials from Secret {credentials.access_key_id.secret!r} are not set: "
                    f"{', '.join(missing)} (render wires them from the Secret's keys "
                    f"`{names.S3_ACCESS_KEY_ID_KEY}` and `{names.S3_SECRET_ACCESS_KEY_KEY}`)"
                )
            options["aws_access_key_id"] = self.environ[credentials.access_key_id.env]
            options["aws_secret_access_key"] = self.environ[credentials.secret_access_key.env]
            self._secrets = [options["aws_access_key_id"], options["aws_secret_access_key"]]
        if self.location.endpoint:
            options["endpoint_url"] = self.location.endpoint
        config = Config(
            connect_timeout=10,
            read_timeout=60,
            retries={"max_attempts": 3, "mode": "standard"},
            # Non-AWS stores (MinIO, Garage, Ceph RGW) want bucket names in the path, not the host name.
            s3={"addressing_style": "path" if self.location.endpoint else "auto"},
        )
        try:
            session = boto3.session.Session()
            self._client = session.client("s3", config=config, **options)
            # A listing rather than HEAD: a refused HEAD has no body, a refused listing says why.
            self._client.list_objects_v2(Bucket=self.location.bucket, Prefix=self.location.prefix, MaxKeys=1)
        except Exception as exc:
            raise self._fail(exc) from None

    def entries(self) -> Iterator[Listed]:
        prefix = self.location.prefix
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.location.bucket, Prefix=prefix, PaginationConfig={"PageSize": 1000}
            )
            for page in pages:
                for item in page.get("Contents", ()):
                    listed = self._listed(item, prefix)
                    if listed is not None:
                        yield listed
        except SourceError:
            raise
        except Exception as exc:
            raise self._fail(exc) from None

    def _listed(self, item: Mapping[str, Any], prefix: str) -> Listed | None:
        key = str(item["Key"])
        relative = key[len(prefix) :]
        if not relative or relative.endswith("/"):
            return None  # the prefix itself, or a "folder" marker
        segments = relative.split("/")
        if any(segment in ("", ".", "..") for segment in segments):
            return Rejected(None, printable(key), "the key has an empty, `.` or `..` path segment; not synced")
        if any(segment.startswith(".") for segment in segments):
            return None  # hidden, as in a directory
        if any(not char.isprintable() for char in relative):
            return Rejected(None, printable(key), "the key holds control characters; not synced")
        size = int(item.get("Size", 0))
        fingerprint = f"{size}:{str(item.get('ETag', '')).strip(chr(34))}"

        def read(limit: int) -> bytes:
            if size > limit:
                raise FileProblem(f"larger than the limit of {limit} bytes (server.max_upload_bytes)")
            try:
                body = self._client.get_object(Bucket=self.location.bucket, Key=key)["Body"]
                with contextlib.closing(body):
                    data: bytes = body.read(limit + 1)
            except Exception as exc:
                raise FileProblem(f"can't be read: {self.scrub(describe_s3_error(exc))}") from None
            if len(data) > limit:
                raise FileProblem(f"larger than the limit of {limit} bytes (server.max_upload_bytes)")
            return data

        return Entry(relative, size, fingerprint, read)


def describe_s3_error(exc: Exception) -> str:
    """What went wrong, in words an operator acts on: the S3 error code and message, or the connection fault."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error", {})
        code = error.get("Code") or response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        message = error.get("Message") or ""
        hint = {
            "InvalidAccessKeyId": "the access key is not known: check the credentials Secret",
            "SignatureDoesNotMatch": "the secret key is wrong: check the credentials Secret",
            "AccessDenied": "access denied: the credentials may not read this bucket",
            "403": "access denied: the credentials are wrong or may not read this bucket",
            "NoSuchBucket": "the bucket does not exist",
            "404": "the bucket does not exist",
            "ExpiredToken": "the credentials have expired",
        }.get(str(code), "")
        return "; ".join(part for part in (f"S3 error {code}", hint, message) if part)
    name = type(exc).__name__
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError", "ReadTimeoutError"):
        return f"the endpoint is unreachable ({name})"
    if name == "NoCredentialsError":
        return "no credentials: declare `s3.credentials` or give the pod an identity (IRSA)"
    return f"{name}: {str(exc)[:300]}"


def make_reader(source: Source, store_id: str, context: Context) -> Reader:
    location = source.location
    if isinstance(location, PathSource):
        root = Path(location.path)
        if not root.is_absolute():
            root = context.base_dir / root
        sidecar_filled = location.volume is not None and location.volume.kind == "empty_dir"
        # A declared volume is mounted at `path`: a directory there that is not a mount point is the empty one
        # underneath, and its listing would delete every document of the source.
        return DirectoryReader(root, must_have_files=sidecar_filled, mount_point=location.volume is not None)
    if isinstance(location, GitSource):
        if context.git_checkouts:
            link = Path(names.git_checkout_path(context.git_checkouts, store_id, source.name))
            return GitSyncReader(location, link, wait_seconds=context.git_sync_wait_seconds)
        directory = context.work_dir / "git" / names.source_hash(store_id, source.name)
        return GitCloneReader(location, directory, context.environ)
    return S3Reader(location, context.environ if context.environ is not None else os.environ)
