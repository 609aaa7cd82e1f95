"""An LLM request and its content address.

Every LLM step builds :class:`LLMRequest` objects; the cache, the backends and the sample's
reference responses all agree on :meth:`LLMRequest.key`, the SHA-256 of the request's canonical
JSON. Change anything that reaches the model (backend, model, system prompt, messages, output
schema, max tokens) and the key changes; change nothing and the stored response is reused.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

from tubetune.jsonio import canonical_json

Role = Literal["user", "assistant"]
KEY_VERSION = 1


@dataclass(frozen=True)
class Message:
    role: Role
    content: str

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class LLMRequest:
    """What is sent to a backend: model, system prompt, messages and the JSON schema of the answer."""

    backend: str
    model: str
    system: str
    messages: tuple[Message, ...]
    output_schema: dict[str, Any] = field(hash=False, compare=False)
    max_tokens: int = 2048

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": KEY_VERSION,
            "backend": self.backend,
            "model": self.model,
            "system": self.system,
            "messages": [m.to_dict() for m in self.messages],
            "output_schema": self.output_schema,
            "max_tokens": self.max_tokens,
        }

    def key(self) -> str:
        return hashlib.sha256(canonical_json(self.to_dict()).encode("utf-8")).hexdigest()

    def followed_by(self, *messages: Message) -> LLMRequest:
        """The same request with more turns appended (used to re-ask after invalid output)."""
        return LLMRequest(
            backend=self.backend,
            model=self.model,
            system=self.system,
            messages=(*self.messages, *messages),
            output_schema=self.output_schema,
            max_tokens=self.max_tokens,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LLMRequest:
        return cls(
            backend=str(data["backend"]),
            model=str(data["model"]),
            system=str(data["system"]),
            messages=tuple(Message(role=m["role"], content=m["content"]) for m in data["messages"]),
            output_schema=dict(data["output_schema"]),
            max_tokens=int(data["max_tokens"]),
        )


def prompt_hash(system: str, user_template: str) -> str:
    """Short hash of a prompt's text, kept as provenance on every Q&A it produced."""
    return hashlib.sha256(f"{system}\n\x00\n{user_template}".encode()).hexdigest()[:16]
