"""Restricted lambda expressions over numbers, parsed with `ast` and interpreted safely.

A guess such as ``lambda x, y, z: x < y < z`` is never compiled or passed to
`eval`. It is parsed, checked against a whitelist, and interpreted node by node:

- exactly three plain parameters (no defaults, *args, **kwargs);
- in the body only: the parameters, int/float/bool constants, arithmetic
  (+ - * / // % **), unary + - not, comparisons (== != < <= > >=), and/or,
  conditional expressions, and calls of the functions in `FUNCTIONS` by name;
- nothing else: no attribute access, subscripts, comprehensions, strings,
  other names or calls, nested lambdas, assignment expressions;
- limits: source length, node count and depth when parsing; when evaluating,
  exponents of at most `MAX_EXPONENT` in magnitude, every value at most
  `MAX_MAGNITUDE`, and a wall-clock budget for a whole batch of evaluations.

Arithmetic faults on one input (division by zero, a value over the limit, the
square root of a negative number) raise `EvaluationError`; callers decide what
they mean (WILT counts them as False).
"""

from __future__ import annotations

import ast
import math
import time
from typing import Any, Callable, Iterable, Sequence

MAX_SOURCE = 400
MAX_NODES = 150
MAX_DEPTH = 24
MAX_CONSTANT = 10**9
MAX_EXPONENT = 64
MAX_MAGNITUDE = 10**60

FUNCTIONS: dict[str, tuple[Callable[..., Any], int, int | None]] = {
    # name: (function, fewest arguments, most arguments or None for any)
    "abs": (abs, 1, 1),
    "min": (min, 2, None),
    "max": (max, 2, None),
    "sqrt": (math.sqrt, 1, 1),
    "floor": (math.floor, 1, 1),
    "ceil": (math.ceil, 1, 1),
}

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: a // b,
    ast.Mod: lambda a, b: a % b,
    ast.Pow: lambda a, b: _power(a, b),
}
_COMPARE: dict[type, Callable[[Any, Any], bool]] = {
    ast.Eq: lambda a, b: a == b,
    ast.NotEq: lambda a, b: a != b,
    ast.Lt: lambda a, b: a < b,
    ast.LtE: lambda a, b: a <= b,
    ast.Gt: lambda a, b: a > b,
    ast.GtE: lambda a, b: a >= b,
}
_UNARY: dict[type, Callable[[Any], Any]] = {
    ast.UAdd: lambda a: +a,
    ast.USub: lambda a: -a,
    ast.Not: lambda a: not a,
}


class UnsafeExpression(ValueError):
    """The source is not a lambda of the allowed form; the message says what is not allowed."""


class EvaluationError(ArithmeticError):
    """Evaluating the expression on one input failed or went over a limit."""


class BudgetExceeded(TimeoutError):
    """A batch of evaluations ran past its time budget."""


def _power(base: Any, exponent: Any) -> Any:
    if abs(exponent) > MAX_EXPONENT:
        raise EvaluationError(f"exponent {exponent!r} is larger than {MAX_EXPONENT}")
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0:
        # Refuse before computing: the result's size is known from the operands'.
        if abs(base) > 1 and base.bit_length() * exponent > MAX_MAGNITUDE.bit_length() + 1:
            raise EvaluationError("the power is too large")
    result = base ** exponent
    if isinstance(result, complex):
        raise EvaluationError("the power is not a real number")
    return result


def _checked(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        raise EvaluationError("the value is not finite")
    if abs(value) > MAX_MAGNITUDE:
        raise EvaluationError("a value is larger than the limit")
    return value


class SafeLambda:
    """A checked lambda over three numbers; call it to get a bool."""

    def __init__(self, source: str, params: tuple[str, str, str], body: ast.expr) -> None:
        self.source = source
        self.params = params
        self._body = body

    def __repr__(self) -> str:
        return f"SafeLambda({self.source!r})"

    def __call__(self, x: float, y: float, z: float) -> bool:
        env = dict(zip(self.params, (x, y, z)))
        try:
            return bool(self._eval(self._body, env))
        except (ArithmeticError, ValueError, TypeError) as exc:
            if isinstance(exc, EvaluationError):
                raise
            raise EvaluationError(f"{type(exc).__name__}: {exc}") from None

    def _eval(self, node: ast.expr, env: dict[str, Any]) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return env[node.id]
        if isinstance(node, ast.BinOp):
            left = self._eval(node.left, env)
            right = self._eval(node.right, env)
            return _checked(_BINARY[type(node.op)](left, right))
        if isinstance(node, ast.UnaryOp):
            return _UNARY[type(node.op)](self._eval(node.operand, env))
        if isinstance(node, ast.BoolOp):
            if isinstance(node.op, ast.And):
                value: Any = True
                for item in node.values:
                    value = self._eval(item, env)
                    if not value:
                        return value
                return value
            value = False
            for item in node.values:
                value = self._eval(item, env)
                if value:
                    return value
            return value
        if isinstance(node, ast.Compare):
            left = self._eval(node.left, env)
            for op, right_node in zip(node.ops, node.comparators):
                right = self._eval(right_node, env)
                if not _COMPARE[type(op)](left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.IfExp):
            branch = node.body if self._eval(node.test, env) else node.orelse
            return self._eval(branch, env)
        if isinstance(node, ast.Call):
            assert isinstance(node.func, ast.Name)
            fn = FUNCTIONS[node.func.id][0]
            return _checked(fn(*(self._eval(a, env) for a in node.args)))
        raise EvaluationError(f"unexpected {type(node).__name__}")  # excluded by _check


def parse_lambda(source: str) -> SafeLambda:
    """Parse and check `source`; raises UnsafeExpression saying what is not allowed."""
    if not isinstance(source, str):
        raise UnsafeExpression(f"expected a string, got {type(source).__name__}")
    source = source.strip()
    if len(source) > MAX_SOURCE:
        raise UnsafeExpression(f"the expression is longer than {MAX_SOURCE} characters")
    try:
        tree = ast.parse(source, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise UnsafeExpression(f"not a valid expression: {exc}") from None
    fn = tree.body
    if not isinstance(fn, ast.Lambda):
        raise UnsafeExpression("the guess must be a lambda expression (lambda x, y, z: ...)")
    args = fn.args
    if (args.posonlyargs or args.vararg or args.kwonlyargs or args.kwarg or args.defaults
            or args.kw_defaults or len(args.args) != 3):
        raise UnsafeExpression("the lambda must take exactly three plain parameters, "
                               "with no defaults")
    params = tuple(a.arg for a in args.args)
    if len(set(params)) != 3 or any(p in FUNCTIONS for p in params):
        raise UnsafeExpression("the three parameters need distinct names that are not "
                               "function names")
    nodes = _check(fn.body, set(params), depth=0)
    if nodes > MAX_NODES:
        raise UnsafeExpression(f"the expression has more than {MAX_NODES} parts")
    return SafeLambda(source, params, fn.body)  # type: ignore[arg-type]


def _check(node: ast.AST, params: set[str], depth: int) -> int:
    """Validate `node` and its children; return how many nodes there are."""
    if depth > MAX_DEPTH:
        raise UnsafeExpression(f"the expression is nested deeper than {MAX_DEPTH}")
    kind = type(node).__name__
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool):
            return 1
        if not isinstance(value, (int, float)):
            raise UnsafeExpression(f"constant {value!r} is not allowed (numbers only)")
        if not math.isfinite(value) or abs(value) > MAX_CONSTANT:
            raise UnsafeExpression(f"constant {value!r} is larger than {MAX_CONSTANT}")
        return 1
    if isinstance(node, ast.Name):
        if node.id not in params:
            raise UnsafeExpression(f"name {node.id!r} is not allowed (only the parameters "
                                   f"{', '.join(sorted(params))})")
        return 1
    if isinstance(node, ast.Call):
        func = node.func
        allowed = ", ".join(FUNCTIONS)
        if not isinstance(func, ast.Name):
            raise UnsafeExpression(f"{type(func).__name__} is not allowed as a function "
                                   f"(allowed functions: {allowed})")
        if func.id not in FUNCTIONS:
            raise UnsafeExpression(f"calling {func.id!r} is not allowed (allowed functions: "
                                   f"{allowed})")
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise UnsafeExpression(f"{func.id}() takes plain positional arguments only")
        _, fewest, most = FUNCTIONS[func.id]
        if len(node.args) < fewest or (most is not None and len(node.args) > most):
            raise UnsafeExpression(f"{func.id}() got {len(node.args)} arguments")
        return 1 + sum(_check(a, params, depth + 1) for a in node.args)
    if isinstance(node, ast.BinOp):
        if type(node.op) not in _BINARY:
            raise UnsafeExpression(f"operator {type(node.op).__name__} is not allowed")
        count = 1 + _check(node.left, params, depth + 1) + _check(node.right, params, depth + 1)
        if isinstance(node.op, ast.Pow):
            _check_constant_exponent(node.right)
        return count
    if isinstance(node, ast.UnaryOp):
        if type(node.op) not in _UNARY:
            raise UnsafeExpression(f"operator {type(node.op).__name__} is not allowed")
        return 1 + _check(node.operand, params, depth + 1)
    if isinstance(node, ast.BoolOp):
        return 1 + sum(_check(v, params, depth + 1) for v in node.values)
    if isinstance(node, ast.Compare):
        for op in node.ops:
            if type(op) not in _COMPARE:
                raise UnsafeExpression(f"comparison {type(op).__name__} is not allowed")
        return 1 + _check(node.left, params, depth + 1) + sum(
            _check(c, params, depth + 1) for c in node.comparators)
    if isinstance(node, ast.IfExp):
        return 1 + sum(_check(n, params, depth + 1) for n in (node.test, node.body, node.orelse))
    raise UnsafeExpression(f"{kind} is not allowed in the expression")


def _check_constant_exponent(node: ast.expr) -> None:
    """Refuse a constant exponent over the limit when parsing (``x ** 10 ** 10``),
    not only when evaluating."""
    if any(isinstance(n, ast.Name) for n in ast.walk(node)):
        return
    try:
        value = SafeLambda("", ("", "", ""), node)._eval(node, {})
    except (ArithmeticError, ValueError, TypeError) as exc:
        raise UnsafeExpression(f"the exponent cannot be computed: {exc}") from None
    if abs(value) > MAX_EXPONENT:
        raise UnsafeExpression(f"exponent {value!r} is larger than {MAX_EXPONENT}")


def evaluate_many(fn: SafeLambda, triples: Iterable[Sequence[float]],
                  budget_s: float = 2.0) -> list[bool]:
    """`fn` on each triple (an evaluation error counts as False), within `budget_s`
    seconds of wall time in all; raises BudgetExceeded past it."""
    deadline = time.perf_counter() + budget_s
    out = []
    for i, (x, y, z) in enumerate(triples):
        if i % 128 == 0 and time.perf_counter() > deadline:
            raise BudgetExceeded(f"evaluation ran past {budget_s} s")
        try:
            out.append(fn(x, y, z))
        except EvaluationError:
            out.append(False)
    return out
