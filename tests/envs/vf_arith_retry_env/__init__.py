"""The ``vf_arith_env`` tasks as a multi-turn verifiers v1 environment: the env is the user of the exchange.

``RetryEnv`` opens an interaction with the agent (verifiers' ``Agent.interaction``, the pattern of its
``user-sim`` env with a scripted user instead of a modeled one): the agent answers the prompt; after a
wrong answer the env says ``FEEDBACK`` and the agent answers again, up to ``attempts`` answers. The
task's own ``@vf.reward`` scores the last answer.
"""

from __future__ import annotations

import verifiers.v1 as vf

from vf_arith_env import ArithTaskset, LocalChatHarness

FEEDBACK = "wrong, again: "


class RetryEnvConfig(vf.EnvConfig):
    agent: vf.AgentConfig = vf.AgentConfig()
    attempts: int = 2


class RetryEnv(vf.Env[RetryEnvConfig]):
    async def run(self, task, agents):
        async with agents.agent.interaction(task) as exchange:
            reply = await exchange.turn()
            for _ in range(self.config.attempts - 1):
                if reply.terminated or reply.last_reply == task.data.answer:
                    break
                reply = await exchange.turn(FEEDBACK)


__all__ = ["ArithTaskset", "LocalChatHarness", "RetryEnv"]
