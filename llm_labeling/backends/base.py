"""What every labeling backend shares: the answer type, token usage, and the two failure kinds."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from llm_labeling.schema import ReportAnnotation


@dataclass
class Usage:
    """Tokens spent on one report, failed attempts included (they cost money too)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, other: object) -> None:
        """Add an OpenAI-style usage object (or another Usage); missing counts add nothing."""
        if other is None:
            return
        self.prompt_tokens += int(getattr(other, 'prompt_tokens', 0) or 0)
        self.completion_tokens += int(getattr(other, 'completion_tokens', 0) or 0)


@dataclass
class Answer:
    """A validated annotation of one text (report_id filled in later: identical texts fan out)."""

    annotation: ReportAnnotation
    usage: Usage = field(default_factory=Usage)
    attempts: int = 1
    cached: bool = False


class LabelingFailed(Exception):
    """One report could not be labelled after its retries; the run goes on and lists it."""

    def __init__(self, reason: str, usage: Usage | None = None, attempts: int = 1):
        super().__init__(reason)
        self.reason, self.usage, self.attempts = reason, usage or Usage(), attempts


class FatalBackendError(RuntimeError):
    """Every report would fail the same way (bad key, unknown model): stop the run at once."""


class Backend(ABC):
    """Labels one report text at a time; async so many requests can be in flight."""

    kind: str = ''
    model: str = ''
    prompt_version: str = ''
    # Whether answers go to the response cache (a deterministic local labeler needs none).
    cacheable: bool = True

    @abstractmethod
    async def label(self, text: str) -> Answer:
        """Label one text, retrying as configured; raise LabelingFailed or FatalBackendError."""

    async def aclose(self) -> None:  # noqa: B027 (optional hook: most backends hold nothing)
        """Release connections or models."""

    def describe(self) -> dict:
        """What labels.meta.json records about the backend (never secrets)."""
        return {'backend': self.kind, 'model': self.model, 'prompt_version': self.prompt_version}
