"""Prices and billing: what each model's tokens cost, the tokens a generation was billed, and
what they come to, live or through the Batch API. MODEL_PRICES (core/settings.py) overrides the
price list."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

# A price above $10,000 per million tokens is a typo.
MAX_PRICE_PER_MILLION = 10_000.0
# The offline generator's model name (core.generators.offline); it costs nothing.
OFFLINE_MODEL = "offline-rules-v1"

# A generation's price tier: the ordinary endpoint, or OpenAI's Batch API.
PriceTier = Literal["live", "batch"]
# The prices a token may be billed at (ModelPrice.per_million); a Spend's fields.
PriceKind = Literal["input", "cached_input", "output"]
PRICE_KINDS: tuple[PriceKind, ...] = get_args(PriceKind)
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

    def per_million(self, tier: PriceTier = "live") -> dict[PriceKind, float]:
        """Each price in `tier`. In the batch tier cached input costs half its live price,
        as the rest does by default."""
        cached = self.input if self.cached_input is None else self.cached_input
        if tier == "live":
            return {"input": self.input, "cached_input": cached, "output": self.output}
        return {
            "input": self.input / 2 if self.batch_input is None else self.batch_input,
            "cached_input": cached / 2,
            "output": self.output / 2 if self.batch_output is None else self.batch_output,
        }

    def cost(self, billed: Billed, tier: PriceTier = "live") -> float:
        """What `billed` comes to in `tier`, each kind of token at its price (Billed.by_price);
        an unknown count costs nothing."""
        per = self.per_million(tier)
        return sum(count * per[kind] for kind, count in billed.by_price().items()) / 1_000_000


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


def _whole(price: PriceKind) -> Any:
    return field(default=None, metadata={"price": price})


def _part(of: str, price: PriceKind | None = None, about: str = "") -> Any:
    return field(default=None, metadata={"part_of": of, "price": price, "about": about})


@dataclass(frozen=True)
class Billed:
    """What a server reports it billed for one call, or for several in all (None: not
    reported), by kind of token, in the names of the columns that record it (TOKEN_FIELDS).
    A generator hands it over with its Generation or GenerationError.

    Each kind says what it is billed at: a whole kind at its price; a part of one (as OpenAI
    counts them) at its own price, or, without one, as the rest of its whole is. Beside the
    generators that read a kind from their server's answer, this is the one place a kind is
    named: tables, sums, exports and costs are built from these fields."""

    prompt_tokens: int | None = _whole("input")
    completion_tokens: int | None = _whole("output")
    # Input read from the server's prompt cache, billed at the cached-input price.
    cached_tokens: int | None = _part(of="prompt_tokens", price="cached_input")
    # Output spent on reasoning, billed as output.
    reasoning_tokens: int | None = _part(of="completion_tokens", about="Of the output tokens, those spent reasoning")

    def __add__(self, other: Billed) -> Billed:
        """Both in all: an unknown count adds nothing, and two unknown stay unknown."""
        return Billed(**{name: _plus(getattr(self, name), getattr(other, name)) for name in TOKEN_FIELDS})

    def as_columns(self, prefix: str = "") -> dict[str, int | None]:
        """The columns that record it, each kind's name after `prefix` (`saved_`: what a hit saved)."""
        return {prefix + name: getattr(self, name) for name in TOKEN_FIELDS}

    @classmethod
    def of(cls, row: Any, prefix: str = "") -> Billed:
        """The tokens a row (a mapping, or any value with the columns as attributes) records
        in the columns named after `prefix`."""
        if isinstance(row, Mapping):
            return cls(**{name: row[prefix + name] for name in TOKEN_FIELDS})
        return cls(**{name: getattr(row, prefix + name) for name in TOKEN_FIELDS})

    @property
    def recorded(self) -> bool:
        """Whether the server said what it billed: every whole kind is known."""
        return all(getattr(self, name) is not None for name in WHOLE_FIELDS)

    @property
    def total(self) -> int:
        """Every token billed: the whole kinds, which hold the parts."""
        return sum(getattr(self, name) or 0 for name in WHOLE_FIELDS)

    def by_price(self) -> dict[PriceKind, int]:
        """How many tokens are billed at each price: a part with a price of its own is taken
        out of its whole's. An unknown count is none."""
        counts: dict[PriceKind, int] = dict.fromkeys(PRICE_KINDS, 0)
        for f in fields(self):
            count, price, whole = getattr(self, f.name) or 0, f.metadata["price"], f.metadata.get("part_of")
            if price is not None:
                counts[price] += count
                if whole is not None:
                    counts[_PRICE_OF[whole]] -= count
        return counts

    @property
    def cached_share(self) -> float | None:
        """The share of the input billed at the cached-input price; None without any input."""
        counts = self.by_price()
        input_total = counts["input"] + counts["cached_input"]
        return counts["cached_input"] / input_total if input_total else None


def _plus(a: int | None, b: int | None) -> int | None:
    return None if a is None and b is None else (a or 0) + (b or 0)


TOKEN_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Billed))
# The kinds no other is part of: every token billed is counted in one of them.
WHOLE_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Billed) if "part_of" not in f.metadata)
_PRICE_OF: dict[str, PriceKind] = {f.name: f.metadata["price"] for f in fields(Billed) if "part_of" not in f.metadata}
# Parts billed as their whole is, reported beside it (name: what they are).
PARTS_BILLED_AS_WHOLE: dict[str, str] = {
    f.name: f.metadata["about"] for f in fields(Billed) if "part_of" in f.metadata and f.metadata["price"] is None
}
NOT_BILLED = Billed()
# Sums of what several calls were billed, before any is added.
NOTHING_BILLED = Billed(**dict.fromkeys(TOKEN_FIELDS, 0))

FREE = ModelPrice(input=0.0, output=0.0)


@dataclass(frozen=True)
class Spend:
    """What billed tokens cost, by the price they are billed at (Billed.by_price)."""

    input: float = 0.0  # input not read from the server's prompt cache
    cached_input: float = 0.0
    output: float = 0.0  # reasoning included

    @classmethod
    def of(cls, price: ModelPrice, billed: Billed, tier: PriceTier = "live") -> Spend:
        per = price.per_million(tier)
        return cls(**{kind: count * per[kind] / 1_000_000 for kind, count in billed.by_price().items()})

    @property
    def total(self) -> float:
        return self.input + self.cached_input + self.output

    def by_price(self) -> dict[PriceKind, float]:
        return {kind: getattr(self, kind) for kind in PRICE_KINDS}

    def __add__(self, other: Spend) -> Spend:
        return Spend(self.input + other.input, self.cached_input + other.cached_input, self.output + other.output)
