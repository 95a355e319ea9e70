"""Multi-attempt episodes: verifier feedback after a wrong attempt ("Learning from Failures in
Multi-Attempt RL", arXiv 2503.04808)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
from pydantic import Field

from rlfold.core.contracts import EnvStep
from rlfold.core.errors import ConfigError
from rlfold.core.registry import ENVIRONMENTS
from rlfold.core.seeding import generator_for
from rlfold.core.types import FINISH_LENGTH, Prompt
from rlfold.rewards.multi_attempt import (
    DEFAULT_FEEDBACK, Extract, Feedback, Verifier, attempt_verifier, render_feedback,
)


@dataclass
class _Episode:
    answer: str
    allowance: int
    made: int = 0


@ENVIRONMENTS.register("multi_attempt")
class MultiAttemptEnv:
    """Multi-attempt RL (arXiv 2503.04808): up to ``attempts`` tries, ``feedback`` after each wrong one.

    An attempt is judged as the ``multi_attempt`` reward judges it (``extract``, ``verifier``); the
    episode ends at a correct attempt, when the row's allowance is used up, or when a turn is cut at
    the token limit. ``feedback`` may contain ``{left}`` (attempts still left, the paper's "You have
    {N-1} attempts left"). With ``min_attempts`` each prompt's allowance is drawn uniformly from
    ``min_attempts..attempts`` from the episode seed (the paper trains with 1..5), the same for all
    samples of a prompt. ``info["attempts"]`` counts attempts (1 per turn) and ``info["correct"]``
    the accepted one.
    """

    def __init__(self, *, attempts: Annotated[int, Field(ge=1)] = 5, feedback: Feedback = DEFAULT_FEEDBACK,
                 min_attempts: Annotated[int, Field(ge=1)] | None = None, extract: Extract = "plain",
                 verifier: Verifier = "exact_match") -> None:
        if attempts < 1:
            raise ConfigError(f"multi_attempt environment: attempts must be >= 1, got {attempts}")
        if min_attempts is not None and not 1 <= min_attempts <= attempts:
            raise ConfigError(f"multi_attempt environment: min_attempts must be in 1..attempts ({attempts}), "
                              f"got {min_attempts}")
        if not feedback:
            raise ConfigError("multi_attempt environment: the feedback text must not be empty")
        attempt_verifier([], extract=extract, verifier=verifier)  # unknown extract / verifier fail now
        self.attempts, self.min_attempts, self.feedback = attempts, min_attempts, feedback
        self.extract, self.verifier = extract, verifier
        self.stop_strings: tuple[str, ...] = ()

    def reset(self, prompt: Prompt, seed: int) -> _Episode:
        allowance = self.attempts
        if self.min_attempts is not None:
            draw = torch.randint(self.min_attempts, self.attempts + 1, (1,), generator=generator_for(seed))
            allowance = int(draw.item())
        return _Episode(answer=prompt.answer, allowance=allowance)

    def step(self, state: _Episode, text: str, finish: str) -> EnvStep:
        state.made += 1
        correct = attempt_verifier([state.answer], extract=self.extract, verifier=self.verifier)(0, text)
        info = {"attempts": 1.0, "correct": float(correct)}
        if correct or state.made >= state.allowance or finish == FINISH_LENGTH:
            return EnvStep(done=True, info=info)
        return EnvStep(observation=render_feedback(self.feedback, state.allowance - state.made), done=False, info=info)


__all__ = ["MultiAttemptEnv"]
