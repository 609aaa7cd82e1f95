"""What LLM tokens cost: the price table of ``llm.prices`` and an offline token count.

Prices are US dollars per million tokens. A Message Batches request is billed at
``batch_discount`` times every rate (the discount stacks with prompt caching). A model with no
entry has no price: its dollars are unknown (None), never guessed. Requests to a local backend
(llama_cpp) cost nothing.

Claude's tokenizer is not public (the ``anthropic`` SDK dropped its Claude 2 ``tokenizer.json``
in 0.39, and that one was already wrong for Claude 3 and later), so :func:`count_tokens` uses
Anthropic's rule of thumb of about 3.5 characters of English per token. The estimate corrects
it with real counts from the response cache where it has any (see ``tubetune.llm.estimate``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from tubetune.errors import ConfigError
from tubetune.jsonio import canonical_json
from tubetune.llm.request import LLMRequest

LOCAL_BACKENDS = frozenset({"llama_cpp"})
PER_TOKENS = 1_000_000
CHARS_PER_TOKEN = 3.5
TOKEN_COUNTER = (
    f"characters / {CHARS_PER_TOKEN:g} (Anthropic's rule of thumb for English; "
    "Claude's tokenizer is not public)"
)


@dataclass(frozen=True)
class Price:
    """Dollars per million tokens of one model, and the multiplier of a Message Batches request."""

    input: float
    output: float
    cache_write: float
    cache_read: float
    batch_discount: float = 0.5

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"price '{item.name}' must be a number >= 0, got {value!r}")
        if not 0 < self.batch_discount <= 1:
            raise ConfigError(f"price 'batch_discount' must be in (0, 1], got {self.batch_discount!r}")


FREE = Price(input=0.0, output=0.0, cache_write=0.0, cache_read=0.0, batch_discount=1.0)
PRICE_KEYS = tuple(item.name for item in fields(Price))


def price_table(mapping: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Price]:
    """``llm.prices`` (model -> rates) as :class:`Price` objects; one-line ConfigError on bad input."""
    prices: dict[str, Price] = {}
    for model, entry in (mapping or {}).items():
        if not isinstance(entry, Mapping):
            raise ConfigError(f"llm.prices.{model}: expected a mapping of {', '.join(PRICE_KEYS)}")
        unknown = sorted(set(entry) - set(PRICE_KEYS))
        if unknown:
            raise ConfigError(
                f"llm.prices.{model}: unknown key '{unknown[0]}' (known keys: {', '.join(PRICE_KEYS)})"
            )
        missing = [key for key in PRICE_KEYS[:4] if key not in entry]
        if missing:
            raise ConfigError(
                f"llm.prices.{model}: missing {', '.join(missing)} (dollars per million tokens)"
            )
        try:
            prices[str(model)] = Price(**{key: entry[key] for key in entry})
        except ConfigError as exc:
            raise ConfigError(f"llm.prices.{model}: {exc}") from None
    return prices


def price_for(prices: Mapping[str, Price], backend: str, model: str) -> Price | None:
    """The price of ``model`` on ``backend``: free when local, None when the table has no entry."""
    if backend in LOCAL_BACKENDS:
        return FREE
    return prices.get(model)


def dollars(
    input_tokens: int = 0,
    output_tokens: int = 0,
    cache_read_tokens: int = 0,
    cache_write_tokens: int = 0,
    *,
    price: Price,
    batch: bool = False,
) -> float:
    """What these tokens cost at ``price``; ``input_tokens`` excludes the cache read and write tokens."""
    total = (
        input_tokens * price.input
        + output_tokens * price.output
        + cache_read_tokens * price.cache_read
        + cache_write_tokens * price.cache_write
    ) / PER_TOKENS
    return total * price.batch_discount if batch else total


def count_tokens(text: str) -> int:
    """Approximate Claude tokens in ``text`` (characters / 3.5, rounded up); 0 for empty text."""
    return math.ceil(len(text) / CHARS_PER_TOKEN) if text else 0


def request_tokens(request: LLMRequest) -> int:
    """Approximate input tokens of ``request``: system prompt, every message and the output schema."""
    return (
        count_tokens(request.system)
        + sum(count_tokens(message.content) for message in request.messages)
        + count_tokens(canonical_json(request.output_schema))
    )


def money(value: float | None) -> str:
    """Dollars for tables: "$0.0123" (4 decimals under a dollar), "$12.34", or "unknown" for None."""
    return "unknown" if value is None else f"${value:,.4f}" if value < 1 else f"${value:,.2f}"
