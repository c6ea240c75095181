"""A persistent SQLite cache of validated LLM answers, so reruns and resumed runs call no model twice.

Each answer is committed the moment it arrives, so a killed run loses nothing that finished. The
key is (text hash, model, prompt version, schema version): changing any of them misses the cache.
Failures are never cached, so a rerun retries them. No request settings (API keys, URLs) are stored.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

_logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    text_sha256 TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    schema_version TEXT NOT NULL,
    findings TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    created REAL NOT NULL
)
"""


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode('utf-8')).hexdigest()


def cache_key(text: str, model: str, prompt_version: str, schema_version: str) -> str:
    parts = [text_sha256(text), model, prompt_version, schema_version]
    return hashlib.sha256(json.dumps(parts).encode('utf-8')).hexdigest()


@dataclass(frozen=True)
class CachedAnswer:
    findings: list[dict]
    prompt_tokens: int
    completion_tokens: int


class ResponseCache:
    """One SQLite file; safe to share between runs (WAL) and between array tasks on one machine."""

    def __init__(self, path: str | Path, model: str, prompt_version: str, schema_version: str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.model, self.prompt_version, self.schema_version = model, prompt_version, schema_version
        try:
            self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            self._db.execute('PRAGMA journal_mode=WAL')
            self._db.execute('PRAGMA synchronous=NORMAL')
            self._db.execute(_SCHEMA)
        except sqlite3.DatabaseError as e:
            if 'full' in str(e):  # 'database or disk is full': a full disk, not a bad file
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path)) from e
            raise ValueError(
                f'Response cache {str(self.path)!r} is not a usable SQLite file: {e}'
            ) from e
        self.hits = 0

    def key(self, text: str) -> str:
        return cache_key(text, self.model, self.prompt_version, self.schema_version)

    def get(self, text: str) -> CachedAnswer | None:
        row = self._db.execute(
            'SELECT findings, prompt_tokens, completion_tokens FROM responses WHERE key = ?',
            (self.key(text),),
        ).fetchone()
        if row is None:
            return None
        self.hits += 1
        return CachedAnswer(json.loads(row[0]), row[1], row[2])

    def put(self, text: str, findings: list[dict], prompt_tokens: int, completion_tokens: int):
        """Store and commit at once (autocommit), so the answer survives a kill right after."""
        self._db.execute(
            'INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)',
            (
                self.key(text),
                text_sha256(text),
                self.model,
                self.prompt_version,
                self.schema_version,
                json.dumps(findings),
                int(prompt_tokens),
                int(completion_tokens),
                time.time(),
            ),
        )

    def __len__(self) -> int:
        return self._db.execute('SELECT COUNT(*) FROM responses').fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
