"""Tools an agent calls between turns: BM25 search over a local corpus, a calculator, sandboxed Python.

A tool is a registered class built from its options; an instance maps the call's argument (the text
between the call tags) to its output, a ``Doc`` list (search) or text, and raises on a bad argument.
The environment (``rlfold.envs.tool_agent``) bounds each call by a timeout and turns an exception or
a timeout into text the model reads, so a tool never stops a run.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import re
import threading
from pathlib import Path
from typing import Annotated, Any, Callable, Protocol

from pydantic import Field

from rlfold.core.errors import ConfigError, DataError
from rlfold.core.registry import TOOLS
from rlfold.envs.tool_formats import Doc, ToolOutput

ASSETS = Path(__file__).resolve().parent.parent / "assets"


class Tool(Protocol):
    """Maps one call's argument to its output; may raise (the environment reports the error as text)."""

    def __call__(self, argument: str) -> ToolOutput: ...


def resolve_data_file(path: str) -> Path:
    """``path`` as given when it exists, else the file of that name shipped in ``rlfold/assets``."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if (ASSETS / path).is_file():
        return ASSETS / path
    raise DataError(f"corpus file {path!r} does not exist (nor as a shipped asset in {ASSETS})")


def read_corpus(path: Path, text_key: str, title_key: str) -> list[Doc]:
    """The documents of a JSONL corpus, one ``{title_key: ..., text_key: ...}`` object per line."""
    docs: list[Doc] = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get(text_key), str):
                raise DataError(f"{path}:{line_no}: a corpus row needs a string field {text_key!r}")
            docs.append(Doc(title=str(row.get(title_key, "")), text=row[text_key]))
    if not docs:
        raise DataError(f"corpus file {path} has no documents")
    return docs


def char_ngrams(text: str, n: int) -> list[str]:
    """The character ``n``-grams of every lower-cased word of ``text``, each word padded with ``#`` at both ends."""
    grams: list[str] = []
    for word in re.findall(r"\w+", text.lower()):
        w = f"#{word}#"
        grams.extend(w[i:i + n] for i in range(max(len(w) - n + 1, 1)))
    return grams


@TOOLS.register("bm25")
class BM25Search:
    """BM25 retrieval (Robertson & Zaragoza 2009) over a local JSONL corpus with ``bm25s``; the Search-R1 retriever.

    Title and text are indexed together, lower-cased, without stemming or stop words (the synthetic
    names of the tiny tasks are not English). The terms are words, or with ``ngram=n`` the character
    n-grams of each word (``#zo``, ``zor``, ...), which still finds a document when the query misspells
    a name. The ``k`` best documents of positive score come back (none for a query of no indexed term:
    the format then writes an empty result). An empty query is an error the model reads.
    """

    def __init__(self, *, corpus: str, k: Annotated[int, Field(ge=1)] = 3, text_key: str = "text",
                 title_key: str = "title", ngram: Annotated[int, Field(ge=0)] = 0) -> None:
        if k < 1:
            raise ConfigError(f"bm25 tool: k must be >= 1, got {k}")
        if ngram < 0:
            raise ConfigError(f"bm25 tool: ngram must be >= 0 (0: words), got {ngram}")
        import bm25s  # a dependency of rlfold; imported here so the registries load without it

        self.docs = read_corpus(resolve_data_file(corpus), text_key, title_key)
        self.k, self.ngram = min(k, len(self.docs)), ngram
        self._index = bm25s.BM25()
        self._index.index([self._terms(f"{d.title} {d.text}") for d in self.docs], show_progress=False)
        self._lock = threading.Lock()  # bm25s' retrieval is not documented thread-safe

    def _terms(self, text: str) -> list[str]:
        return char_ngrams(text, self.ngram) if self.ngram else re.findall(r"\w+", text.lower())

    def __call__(self, argument: str) -> list[Doc]:
        if not argument.strip():
            raise ValueError("empty search query")
        terms = self._terms(argument)
        if not terms:
            raise ValueError(f"the query {argument!r} has no searchable words")
        with self._lock:
            ids, scores = self._index.retrieve([terms], k=self.k, show_progress=False, n_threads=1)
        return [self.docs[int(i)] for i, sc in zip(ids[0], scores[0]) if sc > 0]


_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}


@TOOLS.register("calculator")
class Calculator:
    """Arithmetic on numbers with + - * / // % ** and parentheses (the calculator tool of Toolformer, arXiv 2302.04761).

    The expression is parsed, never evaluated as code; exponents are bounded by ``max_exponent``
    and results by ``max_abs`` so a call cannot hang or exhaust memory. Integral results print as
    integers, others with ``digits`` significant digits.
    """

    def __init__(self, *, digits: Annotated[int, Field(ge=1)] = 6, max_exponent: Annotated[int, Field(ge=1)] = 64,
                 max_abs: float = 1e18) -> None:
        self.digits, self.max_exponent, self.max_abs = digits, max_exponent, max_abs

    def _eval(self, node: ast.AST) -> float | int:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](self._eval(node.operand))
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = self._eval(node.left), self._eval(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > self.max_exponent:
                raise ValueError(f"exponent {right} is larger than {self.max_exponent}")
            value = _BINARY[type(node.op)](left, right)
            if isinstance(value, complex) or abs(value) > self.max_abs:
                raise ValueError("result out of range")
            return value
        raise ValueError(f"unsupported expression element {type(node).__name__}")

    def __call__(self, argument: str) -> str:
        try:
            tree = ast.parse(argument.strip(), mode="eval")
        except SyntaxError:
            raise ValueError(f"cannot parse {argument.strip()!r} as arithmetic") from None
        try:
            value = self._eval(tree.body)
        except ZeroDivisionError:
            raise ValueError("division by zero") from None
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        return str(value) if isinstance(value, int) else f"{value:.{self.digits}g}"


@TOOLS.register("python")
class PythonRunner:
    """Runs the argument as a Python program in the rewards layer's sandbox and returns its stdout (the code
    interpreter tool of ToRL, arXiv 2503.23383).

    The program runs with the sandbox's limits (``timeout_s``, ``memory_mb``, no network, no
    subprocesses); its stdout is returned, or the last line of its traceback when it fails, cut to
    ``max_chars`` characters.
    """

    def __init__(self, *, timeout_s: Annotated[float, Field(gt=0)] = 5.0, memory_mb: Annotated[int, Field(gt=0)] = 512,
                 max_chars: Annotated[int, Field(ge=1)] = 512) -> None:
        self.timeout_s, self.memory_mb, self.max_chars = timeout_s, memory_mb, max_chars

    def __call__(self, argument: str) -> str:
        from rlfold.sandbox.runner import run_sandboxed

        res = run_sandboxed(argument, [], timeout_s=self.timeout_s, memory_mb=self.memory_mb)
        if res.timed_out:
            raise TimeoutError(f"the program ran past {self.timeout_s:g} s")
        failed = res.returncode not in (0, None) or (res.stderr.strip() and not res.stdout)
        text = (res.stderr.strip().splitlines() or ["error"])[-1] if failed else res.stdout
        return text[: self.max_chars]


__all__ = ["BM25Search", "Calculator", "PythonRunner", "Tool", "read_corpus", "resolve_data_file"]
