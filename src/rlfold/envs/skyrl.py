"""SkyRL-Gym environments (``skyrl-gym`` 0.4.0) as rlfold environments, unchanged.

A SkyRL-Gym text environment is made per episode with ``skyrl_gym.make(id, env_config=..., extras=...)``,
given the chat prompt with ``init(prompt)``, then answers each model turn with ``step(text)`` ->
``{observations: [chat messages], reward, done, metadata}``. The adapter maps:

- the rlfold row to SkyRL's per-row ``extras``: ``reward_spec`` is ``Prompt.meta["reward_spec"]`` when the
  dataset has that column (SkyRL datasets do), else ``{"method": "rule", "ground_truth": prompt.answer}``;
  ``extra_info`` is ``Prompt.meta["extra_info"]`` (or ``{}``); a ``meta["env_extras"]`` dict and the
  ``extras`` option are merged over them (the option last);
- ``env_config`` (a dict) to the ``DictConfig`` SkyRL environments read;
- the new observation messages of a step to the observation text: each message through
  ``message_format`` (``{role}``, ``{content}``), joined by ``separator``; it is tokenised on its own by the
  multi-turn engine (loss mask 0), so the model's tokens are never re-tokenised (SkyRL's
  ``postprocessed_action``, a rewrite of the model's turn, is therefore not applied);
- each step's reward to ``info["reward"]``: the multi-turn engine sums it over the episode into the
  row's ``env/reward`` extra, which the ``env_reward`` reward passes to the reward layer; at the end of an
  episode the environment's numeric ``get_metrics()`` land in ``skyrl/<name>``.

An environment that raises, or answers something that is not a step output (observations not a list of
messages, a reward that is not a finite number, ``done`` not a bool), fails its episode with an error
naming the environment: the multi-turn engine ends that episode, counts it in ``env/errors`` with a
warning naming the row, and ``env_reward`` scores it unscorable; the run goes on.
"""

from __future__ import annotations

import copy
import logging
import math
import threading
from dataclasses import dataclass
from typing import Any

from rlfold.core.contracts import EnvStep
from rlfold.core.errors import ConfigError
from rlfold.core.registry import ENVIRONMENTS
from rlfold.core.types import Prompt

LOG = logging.getLogger("rlfold")
INSTALL_HINT = "pip install 'rlfold[agents]' (skyrl-gym==0.4.0)"


def import_skyrl_gym() -> Any:
    """The ``skyrl_gym`` package, or a ConfigError naming the extra that installs it."""
    try:
        import skyrl_gym
    except ImportError as exc:
        raise ConfigError(f"the skyrl_gym environment needs the skyrl-gym package: {INSTALL_HINT} ({exc})") from None
    return skyrl_gym


class SkyRLEnvError(RuntimeError):
    """A SkyRL-Gym environment failed or answered something that is not a step output (the message names it)."""


@dataclass
class _Episode:
    env: Any
    prompt: str
    turns: int = 0
    closed: bool = False


def _number(value: Any, what: str) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(value)  # numpy / torch scalars
        except (TypeError, ValueError):
            raise TypeError(f"{what} is {value!r} ({type(value).__name__}), not a number") from None
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{what} is {v}, not a finite number")
    return v


@ENVIRONMENTS.register("skyrl_gym")
class SkyRLGymEnv:
    """A SkyRL-Gym environment (skyrl-gym 0.4.0, ``skyrl_gym.make(env)``) per episode, unchanged (see the module docstring).

    ``env``: the SkyRL-Gym id (``gsm8k``, ``gsm8k_multi_turn``, or one your ``imports`` register);
    ``env_config``: its config; ``extras``: per-row extras merged over those built from the row;
    ``message_format`` / ``separator``: how observation messages become text; ``stop_strings``: strings that
    end a model turn (a tool call's closing tag, e.g. ``</sql>``).
    """

    stop_strings: tuple[str, ...] = ()

    def __init__(self, *, env: str, env_config: dict[str, Any] | None = None, extras: dict[str, Any] | None = None,
                 message_format: str = "{content}", separator: str = "\n",
                 stop_strings: list[str] | None = None) -> None:
        gym = import_skyrl_gym()
        if env not in gym.registry:
            raise ConfigError(f"skyrl_gym environment: no SkyRL-Gym environment {env!r} is registered (registered: "
                              f"{', '.join(sorted(gym.registry))}); an environment of your own is registered by a "
                              "module named in `imports`")
        try:
            message_format.format(role="user", content="")
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"skyrl_gym environment: message_format {message_format!r} may use only {{role}} and "
                              f"{{content}} ({exc})") from None
        from omegaconf import OmegaConf

        self.gym, self.env_id = gym, env
        self.env_config = OmegaConf.create(dict(env_config or {}))
        self.extras = dict(extras or {})
        self.message_format, self.separator = message_format, separator
        self.stop_strings = tuple(stop_strings or ())
        self._warned_init = False
        self._lock = threading.Lock()

    def extras_for(self, prompt: Prompt) -> dict[str, Any]:
        """SkyRL's per-row ``extras`` for ``prompt`` (see the module docstring)."""
        meta = prompt.meta if isinstance(prompt.meta, dict) else {}
        spec = meta.get("reward_spec")
        out: dict[str, Any] = {
            "reward_spec": copy.deepcopy(spec) if isinstance(spec, dict) else {"method": "rule",
                                                                              "ground_truth": prompt.answer},
            "extra_info": copy.deepcopy(meta.get("extra_info")) if isinstance(meta.get("extra_info"), dict) else {},
        }
        if isinstance(meta.get("env_extras"), dict):
            out.update(copy.deepcopy(meta["env_extras"]))
        out.update(copy.deepcopy(self.extras))
        return out

    def reset(self, prompt: Prompt, seed: int) -> _Episode:
        meta = prompt.meta if isinstance(prompt.meta, dict) else {}
        chat = copy.deepcopy(meta.get("messages")) or [{"role": "user", "content": prompt.text}]
        try:
            env = self.gym.make(self.env_id, env_config=self.env_config, extras=self.extras_for(prompt))
            init = env.init(copy.deepcopy(chat))
        except Exception as exc:  # noqa: BLE001 - re-raised naming the environment
            raise SkyRLEnvError(f"SkyRL-Gym environment {self.env_id!r} failed to start: {type(exc).__name__}: {exc}"
                                ) from exc
        first = init[0] if isinstance(init, tuple) and init else init
        if first != chat:
            with self._lock:
                warn, self._warned_init = not self._warned_init, True
            if warn:
                LOG.warning("SkyRL-Gym environment %r: init() rewrote the prompt; rlfold keeps the prompt as the task "
                            "gave it (the model's context is encoded before the episode starts)", self.env_id)
        return _Episode(env=env, prompt=prompt.text)

    def _observation(self, observations: Any) -> str:
        if not isinstance(observations, list):
            raise TypeError(f"observations is {type(observations).__name__}, not a list of chat messages")
        parts = []
        for i, m in enumerate(observations):
            if not isinstance(m, dict) or not isinstance(m.get("content", ""), str):
                raise TypeError(f"observations[{i}] is {m!r}, not a chat message with text content")
            parts.append(self.message_format.format(role=m.get("role", "user"), content=m.get("content", "")))
        return self.separator.join(parts)

    def step(self, state: _Episode, text: str, finish: str) -> EnvStep:
        state.turns += 1
        try:
            out = state.env.step(text)
            if not isinstance(out, dict):
                raise TypeError(f"step returned {type(out).__name__}, not a step output dict")
            for key in ("observations", "reward", "done"):
                if key not in out:
                    raise TypeError(f"step output has no {key!r} (keys: {', '.join(map(str, out))})")
            if not isinstance(out["done"], bool):
                raise TypeError(f"done is {out['done']!r}, not a bool")
            reward = _number(out["reward"], "reward")
            observation = self._observation(out["observations"])
            info = {"reward": reward}
            if out["done"]:
                info.update(self._metrics(state))
        except Exception as exc:  # noqa: BLE001 - re-raised naming the environment and the turn
            self._close(state)
            raise SkyRLEnvError(f"SkyRL-Gym environment {self.env_id!r}, turn {state.turns}: "
                                f"{type(exc).__name__}: {exc}") from exc
        if out["done"]:
            self._close(state)
        return EnvStep(observation=observation, done=out["done"], info=info)

    def _metrics(self, state: _Episode) -> dict[str, float]:
        metrics = state.env.get_metrics() if callable(getattr(state.env, "get_metrics", None)) else {}
        return {f"skyrl/{k}": float(v) for k, v in (metrics or {}).items()
                if isinstance(v, (int, float)) and math.isfinite(float(v))}

    @staticmethod
    def _close(state: _Episode) -> None:
        if not state.closed:
            state.closed = True
            try:
                state.env.close()
            except Exception as exc:  # noqa: BLE001 - closing is best effort
                LOG.warning("SkyRL-Gym environment close() raised %s: %s", type(exc).__name__, exc)


__all__ = ["SkyRLEnvError", "SkyRLGymEnv", "import_skyrl_gym"]
