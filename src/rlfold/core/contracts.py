"""Protocols of the extension points that more than one layer implements or consumes.

``PromptSource`` (prompt samplers: ``rlfold.tasks.sampling``) and ``Environment`` (what the model
talks to between turns: ``rlfold.envs``; run by ``rlfold.rollout.multi_turn``). The engine contract
lives with the engines, in ``rlfold.rollout.base``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

from rlfold.core.types import Prompt


@runtime_checkable
class PromptSource(Protocol):
    """Draws the training prompts of each step; resumable."""

    def next(self, n: int) -> list[Prompt]:
        """The next ``n`` prompts."""

    def on_completed(self, prompts: Sequence[Prompt]) -> None:
        """Rollouts of ``prompts`` came back (one entry per rollout: a prompt's G samples repeat it)."""

    def metrics(self) -> dict[str, float]:
        """Numbers to log after a step (e.g. the current domain probabilities)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class EnvStep:
    """What an environment answers to one model turn.

    ``observation``: text appended to the context before the next model turn (tokenised on its own,
    with loss mask 0 and attention 1; ``""`` for none). ``done``: the episode is over (no further
    model turn). ``info``: numbers about the turn, summed per episode into ``extras`` and logged as
    ``<key>/mean``; a key with a ``/`` is kept as it is (``tools/calls``), others become ``env/<key>``.
    """

    observation: str = ""
    done: bool = True
    info: dict[str, float] = field(default_factory=dict)


class Environment(Protocol):
    """One episode per row: ``reset`` from the row's prompt, then ``step`` on each model turn's text.

    ``reset(prompt, seed)`` returns the episode state (anything); the G samples of one prompt get
    the same seed. ``step(state, text, finish)`` sees the decoded text of the model's last turn
    alone and its finish reason (``stop`` / ``length``); a turn cut at the length limit ends the
    episode whatever the environment answers. ``stop_strings`` end a model turn as soon as its text
    contains one (a tool call's closing tag), so the environment answers before the model goes on.
    ``step`` may be called from several threads at once, for different episodes.
    """

    stop_strings: Sequence[str]

    def reset(self, prompt: Prompt, seed: int) -> Any: ...

    def step(self, state: Any, text: str, finish: str) -> EnvStep: ...


class Followup(Protocol):
    """A second question asked after each response, whose answer a reward or a metric reads (ACRE's re-ask
    with shuffled options). Registered in ``FOLLOWUPS``, built as ``factory(**options)``, run by
    ``rlfold.rollout.followup.FollowupEngine``: it asks ``questions`` greedily, ``max_new_tokens`` each, with
    the rollout's own engine, and adds ``extras`` to the batch (numbers per row: the ``rollout_extras``
    input of rewards, and ``<key>/mean`` in evaluation). The follow-up's tokens are never trained on."""

    max_new_tokens: int

    def questions(self, prompts: Sequence[Prompt], completions: Sequence[str]) -> list[Prompt | None]:
        """The prompt to ask after each row (its text is encoded as given), or None for a row that gets none."""

    def extras(self, prompts: Sequence[Prompt], completions: Sequence[str],
               answers: Sequence[str | None]) -> dict[str, list[float]]:
        """Per-row numbers from the rows and the follow-up answers (None where none was asked)."""


__all__ = ["EnvStep", "Environment", "Followup", "PromptSource"]
