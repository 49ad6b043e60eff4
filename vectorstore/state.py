"""Typed keys for what the app holds, and small accessors handlers use.

Resource modules import from here, never from `vectorstore.app`, so app.py can import them without cycles.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import psycopg
from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from config import Spec
from vectorstore.embeddings.client import EmbeddingClient
from vectorstore.observability.logs import Redactor
from vectorstore.settings import Settings
from vectorstore.storage.replicas import ReadRouter
from vectorstore.storage.stores import FileCountsProvider

Pool = AsyncConnectionPool[psycopg.AsyncConnection[Any]]


@dataclass
class Readiness:
    """Startup progress: /ready answers 200 only once `ready`; `fatal` is set when startup can't succeed."""

    ready: bool = False
    status: str = "starting"
    error: str | None = None
    fatal: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    summary: dict[str, int] = field(default_factory=dict)


SPEC = web.AppKey("spec", Spec)
SETTINGS = web.AppKey("settings", Settings)
POOL: web.AppKey[Pool] = web.AppKey("pool")
READS = web.AppKey("reads", ReadRouter)
EMBEDDER = web.AppKey("embedder", EmbeddingClient)
READINESS = web.AppKey("readiness", Readiness)
FILE_COUNTS: web.AppKey[FileCountsProvider] = web.AppKey("file_counts")
REDACTOR = web.AppKey("redactor", Redactor)
"""Every secret the server knows (Settings.secret_values), for what leaves it other than logs."""


def spec(request: web.Request) -> Spec:
    return request.app[SPEC]


def pool(request: web.Request) -> Pool:
    return request.app[POOL]


def reads(request: web.Request) -> ReadRouter:
    """Where searches run: `await state.reads(request).run(lambda conn: ...)` picks a caught-up replica when
    `database.read_replicas` is on, else the primary. Only reads that decide nothing belong there."""
    return request.app[READS]


def embedder(request: web.Request) -> EmbeddingClient:
    return request.app[EMBEDDER]
