"""Verifiable rewards for math answers: symbolic checking with math-verify, and GSM8K's final number.

``math_verify`` parses the gold answer and the completion with Hugging Face's ``math_verify`` package
(LaTeX with ``\\boxed{}`` first, then a plain expression / the last number) and calls
``verify(gold, answer)`` -- gold first, because ``verify`` is asymmetric. ``gsm8k`` needs no
dependency: it compares the completion's final number (or its last ``\\boxed{}``) with the number after
``####`` in a GSM8K solution.
"""

from __future__ import annotations

import math
import re
import threading
from typing import Annotated, Any, Sequence

from pydantic import Field

from rlfold.core.types import Prompt
from rlfold.rewards.base import REWARDS

# ---------------------------------------------------------------------------------------------------
# Shared text helpers
# ---------------------------------------------------------------------------------------------------

# A number: optional sign (only when the minus is not glued to a preceding word, digit or bracket, so
# "5-3" reads as 3), then either thousands groups "1,450,000" or plain digits, an optional decimal part;
# or a bare decimal ".5".
_NUMBER = re.compile(
    r"(?:(?<![\w)\]}.])[-\u2212])?"
    r"(?:(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)"
)
_GSM8K_MARK = "####"


def _clean_number(token: str) -> str:
    """Canonical text of a matched number: unicode minus to '-', thousands commas dropped."""
    return token.replace("\u2212", "-").replace(",", "")


def extract_last_number(text: str) -> str | None:
    """The last number in ``text`` with its thousands commas removed ("... is 1,450,000." -> "1450000").

    A leading minus counts only when it is not attached to a preceding word, digit or closing bracket
    ("x = -3" -> "-3", "5-3" -> "3"). LaTeX thousands separators ``{,}`` and ``\\!`` are tolerated.
    Returns None if the text holds no number.
    """
    text = text.replace("{,}", ",").replace("\\!", "")
    last = None
    for m in _NUMBER.finditer(text):
        last = m.group(0)
    return None if last is None else _clean_number(last)


def extract_gsm8k_gold(text: str) -> str | None:
    """The gold number of a GSM8K answer field (Cobbe et al. 2021, arXiv 2110.14168).

    ``"... so she makes $18.\\n#### 18"`` -> ``"18"``; ``"#### 1,450,000"`` -> ``"1450000"``. Without a
    ``####`` marker the whole text must be a bare number (``"72"``, ``"-3"``, ``"$1,600"``, ``"2.5"``).
    Returns None when no number can be read (the sample is then unscorable).
    """
    if _GSM8K_MARK in text:
        tail = text.rsplit(_GSM8K_MARK, 1)[1]
        m = _NUMBER.search(tail.replace("{,}", ","))
        return None if m is None else _clean_number(m.group(0))
    bare = text.strip().replace("$", "").replace("{,}", ",").rstrip(".").strip()
    m = _NUMBER.fullmatch(bare)
    return None if m is None else _clean_number(m.group(0))


def last_boxed_content(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, braces balanced; else None."""
    start = text.rfind("\\boxed")
    name = "\\boxed"
    if start < 0:
        start = text.rfind("\\fbox")
        name = "\\fbox"
        if start < 0:
            return None
    i = start + len(name)
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text) or text[i] != "{":
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None  # unbalanced


# ---------------------------------------------------------------------------------------------------
# GSM8K: final number
# ---------------------------------------------------------------------------------------------------


@REWARDS.register("gsm8k")
def gsm8k(
    prompts: Sequence[Prompt],
    completions: Sequence[str],
    finishes: Sequence[str],
    *,
    tolerance: Annotated[float, Field(ge=0)] = 1e-6,
) -> list[float | None]:
    """GSM8K final-answer accuracy (Cobbe et al. 2021, arXiv 2110.14168): 1 if the answer number matches.

    Gold: ``prompt.answer``, either the bare number or a full GSM8K solution ending in ``#### n``
    (see :func:`extract_gsm8k_gold`); None (unscorable) when no gold number can be read.
    Prediction: the last number inside the last ``\\boxed{...}`` if the completion has one, else the
    last number of the whole completion (:func:`extract_last_number`); commas are dropped. Scores 1.0 if
    ``|pred - gold| <= tolerance`` (absolute, default 1e-6), else 0.0 (also when no number is found).
    Fractions such as ``\\frac{1}{2}`` are not evaluated (GSM8K golds are integers); use
    ``math_verify`` for symbolic answers.
    """
    out: list[float | None] = []
    for p, c in zip(prompts, completions):
        gold_text = extract_gsm8k_gold(p.answer)
        if gold_text is None:
            out.append(None)
            continue
        boxed = last_boxed_content(c)
        pred_text = extract_last_number(boxed) if boxed is not None else None
        if pred_text is None:
            pred_text = extract_last_number(c)
        if pred_text is None:
            out.append(0.0)
            continue
        ok = abs(float(pred_text) - float(gold_text)) <= tolerance
        out.append(1.0 if ok and math.isfinite(float(pred_text)) else 0.0)
    return out


# ---------------------------------------------------------------------------------------------------
# math-verify
# ---------------------------------------------------------------------------------------------------

_MV: Any = None  # the math_verify module, imported on first use (keeps `import rlfold` light)
_PRED_CFG: list = []  # extraction configs, built with the import
_BOXED_CFG: list = []
_MV_LOCK = threading.Lock()
_GOLD_CACHE: dict[tuple[str, bool], tuple] = {}
_GOLD_CACHE_MAX = 100_000
# A math environment already present in a gold string: an unescaped "$", \(, \[, \boxed, \fbox, or a display
# environment (\begin{equation}, align, gather, ...). A bare matrix or array environment (\begin{pmatrix}) is
# LaTeX *inside* math, not a delimiter: such a gold is boxed like any bare LaTeX (as written, math-verify reads
# only its last entry).
_MATH_DELIM = re.compile(
    r"(?<!\\)\$|\\\(|\\\[|\\boxed|\\fbox|\\begin\{(?:equation|align|gather|multline|displaymath|math|flalign|eqnarray)\*?\}")


def _mv():
    """Import math_verify and build the extraction configs once."""
    global _MV, _PRED_CFG, _BOXED_CFG
    if _MV is None:
        with _MV_LOCK:
            if _MV is None:
                try:
                    import math_verify as mv
                except ImportError as exc:  # pragma: no cover - it is a declared dependency
                    raise ImportError(
                        "the 'math_verify' reward needs the math-verify package: pip install 'math-verify>=0.8,<0.10'"
                    ) from exc
                # Completions: \boxed{} wins (priority 0), then other LaTeX / "final answer is" anchors,
                # then a plain expression or the last number.
                _PRED_CFG = [mv.LatexExtractionConfig(boxed_match_priority=0), mv.ExprExtractionConfig()]
                # Golds written as bare LaTeX ("\frac{1}{2}", "x^2+1") are wrapped in \boxed{} and read as LaTeX.
                _BOXED_CFG = [mv.LatexExtractionConfig(boxed_match_priority=0)]
                _MV = mv
    return _MV


def _timeouts_allowed() -> bool:
    """math-verify's timeouts use signal.alarm, which Python allows only in the main thread."""
    return threading.current_thread() is threading.main_thread()


def _gold_text(answer: str) -> str:
    """The gold string to parse: the part after ``####`` for a full GSM8K solution, else the answer."""
    if _GSM8K_MARK in answer:
        gold = extract_gsm8k_gold(answer)
        if gold is not None:
            return gold
    return answer.strip()


def parse_gold(answer: str, timeout_seconds: int | None = 5) -> tuple:
    """The gold answer parsed by math_verify (cached per answer string); () when it cannot be parsed.

    A gold that already carries a math delimiter (``$``, ``\\(``, ``\\boxed``, ...) is parsed as written;
    otherwise it is first read as ``\\boxed{answer}`` (so bare LaTeX like ``\\sqrt{2}`` parses), then as a
    plain expression. A gold that yields no sympy object (only its raw string, e.g. ``"???"``) counts
    as unparseable. Outside the main thread the parse runs without a timeout (see ``math_verify``).
    """
    use_timeout = _timeouts_allowed() and timeout_seconds is not None
    key = (answer, use_timeout)
    hit = _GOLD_CACHE.get(key)
    if hit is not None:
        return hit
    mv = _mv()
    t = timeout_seconds if use_timeout else None
    text = _gold_text(answer)
    parsed: list = []
    if text:
        # no_fallback: a gold that yields no sympy object (only its raw string) counts as unparseable
        kw = {"fallback_mode": "no_fallback", "parsing_timeout": t}
        if _MATH_DELIM.search(text):
            parsed = mv.parse(text, _PRED_CFG, **kw)
        else:
            parsed = mv.parse("\\boxed{" + text + "}", _BOXED_CFG, **kw)
            if not parsed:
                parsed = mv.parse(text, _PRED_CFG, **kw)
    result = tuple(parsed)
    if result:  # an empty parse may be a timeout: do not remember it
        if len(_GOLD_CACHE) >= _GOLD_CACHE_MAX:
            _GOLD_CACHE.clear()
        _GOLD_CACHE[key] = result
    return result


@REWARDS.register("math_verify")
def math_verify(
    prompts: Sequence[Prompt],
    completions: Sequence[str],
    finishes: Sequence[str],
    *,
    timeout_seconds: Annotated[int, Field(ge=1)] | None = 5,
) -> list[float | None]:
    """Rule-based math correctness with Kydlíček, Math-Verify (Hugging Face), as in DeepSeek-R1 (arXiv 2501.12948).

    Gold: ``prompt.answer`` parsed once and cached (a full GSM8K solution is reduced to the number after
    ``####``; see :func:`parse_gold`). Completion: parsed with LaTeX extraction with ``\\boxed{}`` first
    (``LatexExtractionConfig(boxed_match_priority=0)``), then ``ExprExtractionConfig()`` (a plain
    expression / the last number). Score: ``float(verify(gold, answer))`` with the gold first (verify is
    asymmetric: a gold ``1 < x < 2`` accepts a predicted interval ``(1,2)``, not the reverse), so 1.0 or 0.0; an
    unparseable completion scores 0.0. None when the gold cannot be parsed (unscorable sample).

    Timeouts: math-verify bounds each parse / comparison with ``signal.alarm`` (``timeout_seconds``,
    default 5 s), which only works in the main thread. When called from any other thread (a reward
    worker pool, an async server) this function detects it with
    ``threading.current_thread() is not threading.main_thread()`` and passes ``parsing_timeout=None`` /
    ``timeout_seconds=None`` instead: the result is the same, but a pathological expression can then run
    unbounded -- bound such workers from outside (e.g. a process pool with a deadline) if that matters.
    ``timeout_seconds=None`` disables the timeouts everywhere.
    """
    mv = _mv()
    use_timeout = _timeouts_allowed() and timeout_seconds is not None
    t = timeout_seconds if use_timeout else None
    out: list[float | None] = []
    for p, c in zip(prompts, completions):
        gold = parse_gold(p.answer, timeout_seconds)
        if not gold:
            out.append(None)
            continue
        answer = mv.parse(c, _PRED_CFG, parsing_timeout=t)
        if not answer:
            out.append(0.0)
            continue
        out.append(1.0 if mv.verify(list(gold), answer, timeout_seconds=t) else 0.0)
    return out
