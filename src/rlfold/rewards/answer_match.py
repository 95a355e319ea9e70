"""Answer checks named by the ``verifier`` option of the ``rewarding_doubt`` and ``multi_attempt`` rewards."""

from __future__ import annotations

import re
import string
from typing import Callable

from rlfold.core.errors import ConfigError

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def _normalize_answer(text: str) -> str:
    """TriviaQA / SQuAD normalisation: lower case, drop punctuation and articles, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _exact(pred: str, gold: str) -> bool:
    return pred.strip() == gold.strip()


def _normalized(pred: str, gold: str) -> bool:
    return _normalize_answer(pred) == _normalize_answer(gold)


# The values of the ``verifier`` option of the ``rewarding_doubt`` and ``multi_attempt`` rewards.
VERIFIERS: dict[str, Callable[[str, str], bool]] = {
    "exact_match": _exact,  # stripped strings equal
    "normalized_exact_match": _normalized,  # TriviaQA-style normalised EM (the Rewarding Doubt paper's metric)
}


def resolve_verifier(name: str, reward: str) -> Callable[[str, str], bool]:
    """The check called ``name``; an unknown name is a ``ConfigError`` naming ``reward``."""
    try:
        return VERIFIERS[name]
    except KeyError:
        raise ConfigError(
            f"reward {reward!r}: unknown verifier {name!r}; choose one of {', '.join(sorted(VERIFIERS))}"
        ) from None
