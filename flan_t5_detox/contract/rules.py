"""The rule one setting's value must keep, written beside the setting (see `settings.setting`):
a bound on a number or a choice among names. Each rule words its own problem the same way:
`<name> must be <what the rule allows>, got <value>`, and a note on a special value if any.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    """What every rule shares: its note and the wording of its problem. A kind of rule says what
    it allows (`allowed`) and tests a value (`allows`)."""

    note: str = ""  # what a special value means, e.g. "0 = never"

    def allows(self, value) -> bool:
        raise NotImplementedError

    def allowed(self) -> str:
        raise NotImplementedError

    def problem(self, name: str, value) -> str | None:
        """None when `value` keeps the rule, else the reason it does not."""
        if self.allows(value):
            return None
        shown = repr(value) if isinstance(value, str) else str(value)
        return f"{name} must be {self.allowed()}, got {shown}" + (f" ({self.note})" if self.note else "")


@dataclass(frozen=True)
class Bound(Rule):
    """`low` and `high` (either may be None: no bound), each included or not."""

    low: float | None = None
    high: float | None = None
    low_included: bool = True
    high_included: bool = True

    def allows(self, value) -> bool:
        if self.low is not None and (value < self.low or (value == self.low and not self.low_included)):
            return False
        return self.high is None or value < self.high or (value == self.high and self.high_included)

    def allowed(self) -> str:
        if self.low is not None and self.high is not None:
            opening, closing = "[" if self.low_included else "(", "]" if self.high_included else ")"
            return f"in {opening}{self.low}, {self.high}{closing}"
        if self.low is not None:
            return f"{'>=' if self.low_included else '>'} {self.low}"
        return f"{'<=' if self.high_included else '<'} {self.high}"


@dataclass(frozen=True)
class OneOf(Rule):
    choices: tuple[str, ...] = ()

    def allows(self, value) -> bool:
        return value in self.choices

    def allowed(self) -> str:
        return "one of " + ", ".join(self.choices)


def at_least(low: float, note: str = "") -> Bound:
    return Bound(note=note, low=low)


def above(low: float, note: str = "") -> Bound:
    return Bound(note=note, low=low, low_included=False)


def between(low: float, high: float, high_included: bool = False) -> Bound:
    """Strictly above `low`; below `high`, or up to it with `high_included`."""
    return Bound(low=low, high=high, low_included=False, high_included=high_included)


def one_of(choices: tuple[str, ...], note: str = "") -> OneOf:
    return OneOf(note=note, choices=tuple(choices))
