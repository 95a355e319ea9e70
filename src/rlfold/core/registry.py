"""Named registries of algorithm parts (advantages, policy losses, aggregations, KL, rewards, engines)."""

from __future__ import annotations

import threading
from typing import Callable, Generic, TypeVar

from rlfold.core.errors import RlfoldError
from rlfold.core.suggest import closest

T = TypeVar("T")

# The built-in parts register themselves when the layers defining them are imported. The package root
# (rlfold/__init__.py) installs the function importing them; a registry calls it the first time it is read
# (get, names, in, unregister), so a light import such as the CLI's loads no model code, and the core
# imports no higher layer.
_builtin_loader: Callable[[], None] | None = None
_builtins_state = "absent"  # "absent" | "loading" | "loaded"
_builtins_lock = threading.RLock()


def set_builtin_loader(load: Callable[[], None]) -> None:
    """Install the function that registers the built-in parts (called by the package root)."""
    global _builtin_loader
    _builtin_loader = load


def load_builtins() -> None:
    """Register the built-in parts now: once, and not again while they are being registered."""
    global _builtins_state
    if _builtins_state == "loaded" or _builtin_loader is None:
        return
    with _builtins_lock:  # reentrant: a read by the layers being imported returns at once
        if _builtins_state != "absent":
            return
        _builtins_state = "loading"
        try:
            _builtin_loader()
        except BaseException:
            _builtins_state = "absent"
            raise
        _builtins_state = "loaded"


class UnknownPartError(RlfoldError, KeyError):
    """Raised when a part name is not registered; the message suggests the closest name."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0])


class Registry(Generic[T]):
    """A mapping from literature names (``grpo``, ``ppo_clip``) to parts."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``; duplicate names are an error."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return deco

    def unregister(self, name: str) -> T:
        """Remove and return a part (tests and interactive sessions replacing a part)."""
        load_builtins()
        return self._items.pop(name)

    def get(self, name: str) -> T:
        """Return the part called ``name`` or raise naming the closest registered one."""
        load_builtins()
        try:
            return self._items[name]
        except KeyError:
            close = closest(name, list(self._items))
            hint = f"; did you mean {close!r}?" if close else ""
            raise UnknownPartError(
                f"unknown {self.kind} {name!r}{hint} (registered: {', '.join(sorted(self._items))})"
            ) from None

    def names(self) -> list[str]:
        load_builtins()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        load_builtins()
        return name in self._items


def needs(*inputs: str) -> Callable[[T], T]:
    """Declare the batch inputs a part needs beyond its positional tensors (``values``, ``token_rewards``, ...).

    The trainer reads ``part.needs`` and supplies each named input as a keyword tensor; a part
    therefore never reaches into the trainer, and adding one does not change the trainer loop.
    """

    def deco(obj: T) -> T:
        obj.needs = tuple(inputs)  # type: ignore[attr-defined]
        return obj

    return deco


def needed_inputs(part: object) -> tuple[str, ...]:
    """The inputs declared with ``@needs`` (empty for parts that need only their positional tensors)."""
    return tuple(getattr(part, "needs", ()))


def checks_rewards(check: Callable[..., "tuple[tuple, str] | None"]) -> Callable[[T], T]:
    """Declare how a part's options that name reward functions are checked against the run's ``rewards``.

    ``check(rewards, **options)`` gets the run's ``(name, weight)`` pairs in recipe order and returns
    ``(location inside the options, message)`` of the first problem, or None; config validation reports
    it at that location (a reward aggregator's ``gates`` naming a reward the run does not score).
    """

    def deco(obj: T) -> T:
        obj.checks_rewards = check  # type: ignore[attr-defined]
        return obj

    return deco


def reward_check(part: object) -> Callable[..., "tuple[tuple, str] | None"] | None:
    """The check declared with ``@checks_rewards`` (None for a part whose options name no reward)."""
    return getattr(part, "checks_rewards", None)


# The named registries. They live in the core so that configuration can be validated against them
# without importing the layers that fill them; the built-in parts are registered on first read (above).
ADVANTAGES: Registry = Registry("advantage estimator")
POLICY_LOSSES: Registry = Registry("policy loss")
AGGREGATIONS: Registry = Registry("loss aggregation")
KL_ESTIMATORS: Registry = Registry("KL estimator")
REWARDS: Registry = Registry("reward function")
TASKS: Registry = Registry("task")
ENGINES: Registry = Registry("rollout engine")
SELECTIONS: Registry = Registry("selection part")
SHAPINGS: Registry = Registry("reward shaping part")
GROUP_FILTERS: Registry = Registry("group filter")
SAMPLERS: Registry = Registry("prompt sampler")
ENVIRONMENTS: Registry = Registry("environment")
TRAINERS: Registry = Registry("trainer")
TRACKERS: Registry = Registry("experiment tracker")
COLLECTORS: Registry = Registry("rollout collector")  # rollout.async_mode: sync, one_step, bounded
TOOLS: Registry = Registry("tool")  # what an agent calls between turns: bm25, calculator, python
TOOL_FORMATS: Registry = Registry("tool-call format")  # how a turn writes a call and reads its result: search_r1, ...
PREFERENCE_LOSSES: Registry = Registry("preference loss")  # preference.loss: dpo, ipo, kto, lipo_lambda, ...
REGULARIZERS: Registry = Registry("regulariser")  # algo.regularizers: chi2_occupancy, ... (algos.regularizers)
CONFIDENCE_PARSERS: Registry = Registry("confidence parser")  # eval.confidence: completion -> stated p in [0, 1]
REWARD_AGGREGATORS: Registry = Registry("reward aggregator")  # reward_aggregation.name: weighted_sum, gated
FOLLOWUPS: Registry = Registry("follow-up question")  # rollout.followup.name: shuffled_options (envs.followups)
REWARD_HEADS: Registry = Registry("reward-model head")  # reward_modeling.head: last_token, sentence (rewards.reward_heads)
REPLAYS: Registry = Registry("replay part")  # algo.replay.name: pipo (algos.pipo); a batch to update on once more
