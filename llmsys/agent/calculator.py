"""A safe arithmetic calculator: numbers, + - * / // % ** and parentheses, nothing else.

    calculator("12 * (3 + 4)")   # -> "84"
    calculator("2 ** 1000")      # -> "Error: result is too large (at most 1e30)"

The expression is parsed with `ast` and only number constants and arithmetic operators are
evaluated (never `eval`); exponents, magnitudes and the expression length are capped, so no
input can hang or exhaust memory. Problems come back as text starting with "Error: ", which
an agent passes to the model as the observation. The agent's built-in `calculator` tool and
the bundled model's training data both use this function.
"""

from __future__ import annotations

import ast
import math
import operator

MAX_EXPRESSION_CHARS = 200
MAX_EXPONENT = 64
MAX_MAGNITUDE = 10**30
_BINARY_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
               ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv,
               ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY_OPS = {ast.USub: operator.neg, ast.UAdd: operator.pos}


class _CalculatorError(Exception):
    pass


def _checked(value: object) -> int | float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _CalculatorError("result is not a real number")
    if isinstance(value, float) and not math.isfinite(value) or abs(value) > MAX_MAGNITUDE:
        raise _CalculatorError(f"result is too large (at most 1e{len(str(MAX_MAGNITUDE)) - 1})")
    return value


def _evaluate(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _checked(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY_OPS:
        return _UNARY_OPS[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise _CalculatorError(f"exponent {right} is too large (at most {MAX_EXPONENT})")
        return _checked(_BINARY_OPS[type(node.op)](left, right))
    raise _CalculatorError(f"unsupported syntax: {type(node).__name__} (only numbers, "
                           "+ - * / // % ** and parentheses are allowed)")


def format_number(value: int | float) -> str:
    """Plain digits for whole numbers ("96400"), else at most 4 decimals ("12.5")."""
    if isinstance(value, float):
        if value.is_integer():
            return str(int(value))
        text = f"{value:.4f}".rstrip("0").rstrip(".")
        return "0" if text == "-0" else text
    return str(value)


def calculator(expression: str) -> str:
    """Evaluate arithmetic safely; problems come back as a string starting with "Error: "."""
    if not isinstance(expression, str):
        return f"Error: expression must be a string, got {type(expression).__name__}"
    if len(expression) > MAX_EXPRESSION_CHARS:
        return (f"Error: expression is too long ({len(expression)} characters, "
                f"at most {MAX_EXPRESSION_CHARS})")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        return f"Error: invalid expression {expression!r}"
    try:
        return format_number(_evaluate(tree.body))
    except ZeroDivisionError:
        return "Error: division by zero"
    except OverflowError:
        return "Error: result is too large"
    except _CalculatorError as error:
        return f"Error: {error}"


def _calculator_tool():
    from llmsys.agent.tools import tool

    @tool(name="calculator")
    def calculate(expression: str) -> str:
        """Evaluate an arithmetic expression and return the result.

        Args:
            expression: An arithmetic expression, for example 12 * (3 + 4).
        """
        return calculator(expression)

    return calculate


calculator_tool = _calculator_tool()
