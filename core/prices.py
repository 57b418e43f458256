"""Prices and billing: what each model's tokens cost, the tokens a generation was billed, and
what they come to, live or through the Batch API. MODEL_PRICES (core/settings.py) overrides the
price list."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# A price above $10,000 per million tokens is a typo.
MAX_PRICE_PER_MILLION = 10_000.0
# The offline generator's model name (core.generators.offline); it costs nothing.
OFFLINE_MODEL = "offline-rules-v1"

# A generation's price tier: the ordinary endpoint, or OpenAI's Batch API.
PriceTier = Literal["live", "batch"]
Price = Annotated[float, Field(ge=0, le=MAX_PRICE_PER_MILLION, allow_inf_nan=False)]


class ModelPrice(BaseModel):
    """USD per million tokens. Unset, cached input costs the input price (a server that
    discounts nothing) and the Batch API half of each live price, as OpenAI bills it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: Price
    output: Price
    cached_input: Price | None = None
    batch_input: Price | None = None
    batch_output: Price | None = None

    def cost(
        self, prompt_tokens: int, completion_tokens: int, *, cached_tokens: int = 0, tier: PriceTier = "live"
    ) -> float:
        """What a call is billed. `cached_tokens` are part of `prompt_tokens`, as OpenAI counts
        them, billed at the cached price instead of the input price; reasoning tokens are
        part of `completion_tokens`, billed as output. In the batch tier cached input costs
        half its live price, as the rest does by default."""
        cached = self.input if self.cached_input is None else self.cached_input
        if tier == "live":
            per_input, per_cached, per_output = self.input, cached, self.output
        else:
            per_input = self.input / 2 if self.batch_input is None else self.batch_input
            per_output = self.output / 2 if self.batch_output is None else self.batch_output
            per_cached = cached / 2
        uncached = prompt_tokens - cached_tokens
        return (uncached * per_input + cached_tokens * per_cached + completion_tokens * per_output) / 1_000_000


# OpenAI's published standard-tier prices (input, cached input, output) as last checked here
# (not fetched: the machines have no internet); MODEL_PRICES overrides them. The offline
# generator costs nothing.
DEFAULT_MODEL_PRICES: dict[str, ModelPrice] = {
    **{
        name: ModelPrice(input=price_in, cached_input=price_cached, output=price_out)
        for name, (price_in, price_cached, price_out) in {
            "gpt-4o-mini": (0.15, 0.075, 0.60),
            "gpt-4o": (2.50, 1.25, 10.00),
            "gpt-4.1": (2.00, 0.50, 8.00),
            "gpt-4.1-mini": (0.40, 0.10, 1.60),
            "gpt-4.1-nano": (0.10, 0.025, 0.40),
            "o4-mini": (1.10, 0.275, 4.40),
            "o3": (2.00, 0.50, 8.00),
        }.items()
    },
    OFFLINE_MODEL: ModelPrice(input=0.0, output=0.0),
}


@dataclass(frozen=True)
class Billed:
    """What a server reports it billed for one call, or for several in all (None: not
    reported), by kind of token, in the names of the columns that record it (TOKEN_FIELDS).
    A generator hands it over with its Generation or GenerationError."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    # Parts of the two above, as OpenAI counts them: input read from the server's prompt
    # cache (billed at the cached-input price) and output spent on reasoning (billed as output).
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None

    def __add__(self, other: Billed) -> Billed:
        """Both in all: an unknown count adds nothing, and two unknown stay unknown."""
        return Billed(**{name: _plus(getattr(self, name), getattr(other, name)) for name in TOKEN_FIELDS})

    def as_columns(self) -> dict[str, int | None]:
        return {name: getattr(self, name) for name in TOKEN_FIELDS}

    @classmethod
    def of(cls, row: Any) -> Billed:
        """The tokens a row (or any value with the columns as attributes) records."""
        return cls(**{name: getattr(row, name) for name in TOKEN_FIELDS})


def _plus(a: int | None, b: int | None) -> int | None:
    return None if a is None and b is None else (a or 0) + (b or 0)


TOKEN_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Billed))
NOT_BILLED = Billed()


def cost(price: ModelPrice, prompt: int | None, completion: int | None, cached: int | None, tier: PriceTier) -> float:
    return price.cost(prompt or 0, completion or 0, cached_tokens=cached or 0, tier=tier)


FREE = ModelPrice(input=0.0, output=0.0)


@dataclass(frozen=True)
class Spend:
    """What billed tokens cost, by kind of token, each at its price (ModelPrice.cost)."""

    input: float = 0.0  # input not read from the server's prompt cache
    cached_input: float = 0.0
    output: float = 0.0  # reasoning included

    @classmethod
    def of(cls, price: ModelPrice, prompt_tokens: int, cached_tokens: int, completion_tokens: int) -> Spend:
        return cls(
            input=price.cost(prompt_tokens - cached_tokens, 0),
            cached_input=price.cost(cached_tokens, 0, cached_tokens=cached_tokens),
            output=price.cost(0, completion_tokens),
        )

    @property
    def total(self) -> float:
        return self.input + self.cached_input + self.output

    def __add__(self, other: Spend) -> Spend:
        return Spend(self.input + other.input, self.cached_input + other.cached_input, self.output + other.output)
