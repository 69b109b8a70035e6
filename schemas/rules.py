"""Alert rules' shared vocabulary: kinds, health checks, bounds, and the custom expressions'
language (CEL, through `common-expression-language`), checked here so the API that stores a
rule and the stage that will evaluate it read one definition. No I/O.

A custom expression is a CEL boolean over doubles. Its variables are the catalogue metrics
(`profileViews`: the current value, as the dashboards show it) and, for each, its value one
window earlier: `profileViews_prev1d`, `profileViews_prev7d`, `profileViews_prev30d` (CEL reads
`a.b` as a field of `a`, so the window is a suffix). Numbers are doubles and CEL does not mix
int and double: write `2.0 * profileViews_prev7d` (or `double(2)`), not `2 * ...`.

Cost bound: only the operators below and `double()` are allowed (no macros, so no loops, no
lists or maps to iterate) and the text is at most MAX_EXPRESSION_CHARS, so evaluating one is
linear in its length; the library itself refuses nesting deeper than about 100 levels.
"""

from __future__ import annotations

import re
from typing import Final, Literal

import cel

from schemas.metrics import CATALOGUE

__all__ = [
    "CHANGE_WINDOW_MAX_S",
    "DURATION_MAX_S",
    "EXPRESSION_FUNCTIONS",
    "EXPRESSION_VARIABLES",
    "HEALTH_CHECKS",
    "KINDS",
    "MAX_EXPRESSION_CHARS",
    "MAX_RULES_PER_USER",
    "PREVIOUS_WINDOWS",
    "ExpressionError",
    "HealthCheck",
    "Kind",
    "check_expression",
]

Kind = Literal["threshold", "change", "goal", "nodata", "health", "custom"]
KINDS: Final = ("threshold", "change", "goal", "nodata", "health", "custom")
HealthCheck = Literal[
    "groupLag", "oldestPendingAge", "dlqGrowth", "rollupLag", "timescaleDown", "redisDown"
]
HEALTH_CHECKS: Final = (
    "groupLag",
    "oldestPendingAge",
    "dlqGrowth",
    "rollupLag",
    "timescaleDown",
    "redisDown",
)
# A rule is a handful per user; the cap keeps a runaway client from growing the table (and the
# evaluation index) without bound.
MAX_RULES_PER_USER: Final = 100
# `for`, `keepFiringFor` and cooldown: a week. Longer holds nothing a user would wait for, and
# keeps every sum of times in the evaluator far from integer limits (migration 0007 checks it).
DURATION_MAX_S: Final = 7 * 86_400
# A change compares two windows of at most 90 days: the raw retention keeps 180.
CHANGE_WINDOW_MAX_S: Final = 90 * 86_400
MAX_EXPRESSION_CHARS: Final = 1_000
PREVIOUS_WINDOWS: Final = ("1d", "7d", "30d")
EXPRESSION_VARIABLES: Final = frozenset(CATALOGUE) | frozenset(
    f"{m}_prev{w}" for m in CATALOGUE for w in PREVIOUS_WINDOWS
)
# What the library reports in `Program.functions()`: operators as `_op_`, and the only named
# function allowed. Anything else (macros such as `all` or `exists`, `in`, indexing, `size`)
# is refused, which is what bounds the cost.
EXPRESSION_FUNCTIONS: Final = frozenset(
    {
        "_&&_", "_||_", "!_", "-_", "_?_:_",
        "_==_", "_!=_", "_<_", "_<=_", "_>_", "_>=_",
        "_+_", "_-_", "_*_", "_/_",
        "double",
    }
)  # fmt: skip
_SYNTAX: Final = re.compile(r"<input>:(?P<line>\d+):(?P<column>\d+): (?P<what>[^\n]*)")


class ExpressionError(ValueError):
    """A custom expression the rules refuse; `line` and `column` (1-based) locate it, when the
    problem has a place (a type error found by the trial evaluation has none)."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None):
        self.line, self.column = line, column
        where = f"at line {line}, column {column}: " if line is not None else ""
        super().__init__(f"{where}{message}")


def _locate(source: str, pattern: str) -> tuple[int | None, int | None]:
    """1-based (line, column) of the first match of `pattern` in `source`, or (None, None)."""
    match = re.search(pattern, source)
    if match is None:
        return None, None
    before = source[: match.start()]
    return before.count("\n") + 1, match.start() - (before.rfind("\n") + 1) + 1


def check_expression(source: str) -> None:
    """Refuse (ExpressionError) anything but a boolean CEL expression over the known variables,
    with the allowed operators. Parses with the library, then runs the program once with every
    variable at 1.0 to catch type errors (`2 * x`: int times double) and non-boolean results.
    Never evaluates Python."""
    if len(source) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(f"longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        program = cel.compile(source)
    except ValueError as e:
        found = _SYNTAX.search(str(e))
        if found is None:
            raise ExpressionError(f"does not parse: {e}") from None
        raise ExpressionError(found["what"], int(found["line"]), int(found["column"])) from None
    for name in program.variables():
        if name not in EXPRESSION_VARIABLES:
            line, column = _locate(source, rf"(?<![\w.]){re.escape(name)}(?!\w)")
            raise ExpressionError(
                f"unknown variable {name!r}: use a catalogue metric, optionally with "
                f"_prev{'/_prev'.join(PREVIOUS_WINDOWS)}",
                line,
                column,
            )
    for function in program.functions():
        if function not in EXPRESSION_FUNCTIONS:
            line, column = _locate(source, rf"\b{re.escape(function)}\s*\(")
            shown = function.strip("_@") or function
            raise ExpressionError(f"{shown!r} is not allowed in a rule expression", line, column)
    try:
        result = program.execute({name: 1.0 for name in program.variables()})
    except (TypeError, ValueError, RuntimeError) as e:
        raise ExpressionError(f"does not evaluate: {e}") from None
    if not isinstance(result, bool):
        raise ExpressionError(f"must be a boolean, but gives a {type(result).__name__}")
