"""Follow-up questions asked after a response (``FOLLOWUPS``; run by ``rlfold.rollout.followup``)."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Sequence

from pydantic import Field

from rlfold.core.registry import FOLLOWUPS
from rlfold.core.seeding import derive_seed
from rlfold.core.types import Prompt
from rlfold.rewards.choice import CONSISTENT, chosen_value, parse_choice
from rlfold.tasks.choice_arith import choice_prompt

ASKED = "followup/asked"  # 1: the response had a trace and a letter, so the choice was re-asked


@FOLLOWUPS.register("shuffled_options")
class ShuffledOptions:
    """ACRE (arXiv 2510.10104): re-ask the choice after the same reasoning trace, with the options in another order.

    The options are rotated by 1-3 places (drawn per row from ``seed``, the prompt and the response), so the
    first choice's option always moves to another letter: a choice that follows the trace names the same
    value again, a positional habit does not. Needs prompts with ``meta["options"]`` and
    ``meta["question"]`` (the ``choice_arith`` task) and responses ``"<trace> so <letter>"``."""

    def __init__(self, *, max_new_tokens: Annotated[int, Field(ge=1)] = 1, seed: int = 0) -> None:
        self.max_new_tokens, self.seed = max_new_tokens, seed

    def rotation(self, prompt: Prompt, completion: str) -> int:
        """How many places this row's options move (1 to n - 1)."""
        n = len(prompt.meta["options"])
        return 1 + derive_seed(self.seed, "shuffled_options", prompt.text, completion) % (n - 1)

    def rotated(self, prompt: Prompt, completion: str) -> list:
        opts, k = list(prompt.meta["options"]), self.rotation(prompt, completion)
        return opts[k:] + opts[:k]

    def questions(self, prompts: Sequence[Prompt], completions: Sequence[str]) -> list[Prompt | None]:
        out: list[Prompt | None] = []
        for p, c in zip(prompts, completions):
            parsed = parse_choice(c)
            if parsed is None or not isinstance(p.meta, dict) or "options" not in p.meta or "question" not in p.meta:
                out.append(None)
                continue
            options = self.rotated(p, c)
            text = choice_prompt(options, p.meta["question"]) + parsed[0]
            out.append(replace(p, text=text, meta={**p.meta, "options": options}))
        return out

    def extras(self, prompts: Sequence[Prompt], completions: Sequence[str],
               answers: Sequence[str | None]) -> dict[str, list[float]]:
        consistent, asked = [], []
        for p, c, a in zip(prompts, completions, answers):
            parsed = parse_choice(c)
            first = chosen_value(p, parsed[1]) if parsed is not None and a is not None else None
            second = chosen_value(p, a.strip()[:1], self.rotated(p, c)) if first is not None and a.strip() else None
            consistent.append(float(first is not None and second == first))
            asked.append(float(a is not None))
        return {CONSISTENT: consistent, ASKED: asked}


__all__ = ["ASKED", "CONSISTENT", "ShuffledOptions"]
