"""The ``shuffled_options`` follow-up (ACRE's re-ask) and the engine that asks it."""

import torch

from rlfold.core.config_loader import load_config
from rlfold.core.types import Prompt, RolloutBatch
from rlfold.envs.followups import ASKED, ShuffledOptions
from rlfold.rewards.choice import CONSISTENT, LETTERS
from rlfold.rollout import GenerationRequest, SamplingParams
from rlfold.rollout.build import build_engine
from rlfold.rollout.followup import FollowupEngine
from rlfold.tasks import TASKS

P = Prompt("A:124 B:135 C:125 D:115 | 58+67=", "C",
           {"options": [124, 135, 125, 115], "question": "58+67=", "value": "125"})


def test_the_options_rotate_so_the_chosen_one_moves():
    f = ShuffledOptions()
    for c in ["125 so C", "125 so A", "99 so B", "125 so D"]:
        k = f.rotation(P, c)
        assert 1 <= k <= 3
        rotated = f.rotated(P, c)
        assert sorted(rotated) == sorted(P.meta["options"])
        assert all(rotated[i] != P.meta["options"][i] for i in range(4))  # every option changes letter
    assert {f.rotation(P, f"{v} so C") for v in range(40)} == {1, 2, 3}


def test_the_question_is_the_rotated_prompt_followed_by_the_same_trace():
    f = ShuffledOptions()
    q = f.questions([P, P], ["125 so C", "no letter"])
    assert q[1] is None
    opts = q[0].meta["options"]
    assert q[0].text == " ".join(f"{LETTERS[i]}:{v}" for i, v in enumerate(opts)) + " | 58+67=125 so "


def test_consistency_is_judged_by_the_option_value_not_the_letter():
    f = ShuffledOptions()
    rotated = f.rotated(P, "125 so C")
    same = LETTERS[rotated.index(125)]
    other = LETTERS[rotated.index(124)]
    got = f.extras([P, P, P, P], ["125 so C"] * 3 + ["bad"], [same, other, "C", None])
    assert got[CONSISTENT] == [1.0, 0.0, float(same == "C"), 0.0]
    assert got[ASKED] == [1.0, 1.0, 1.0, 0.0]


class _Scripted:
    """An engine answering each request with the next scripted text (records what it was asked)."""

    pad_id, shares_weights = 0, True

    def __init__(self, answers):
        self.answers, self.calls = list(answers), []

    def generate(self, requests, params, seed):
        self.calls.append(([r.prompt.text for r in requests], params))
        n = len(requests) * params.n
        texts = [self.answers.pop(0) for _ in range(n)]
        z = torch.zeros(n, 1)
        return RolloutBatch(prompt_ids=torch.ones(n, 1, dtype=torch.long), prompt_mask=torch.ones(n, 1, dtype=torch.long),
                            response_ids=torch.ones(n, 1, dtype=torch.long),
                            response_mask=torch.ones(n, 1, dtype=torch.long), sample_logprobs=z, policy_logprobs=z,
                            finish_reasons=["stop"] * n, response_texts=texts, entropy=z)


def test_the_engine_asks_greedily_after_each_response_and_adds_the_extras():
    f = ShuffledOptions()
    rotated = f.rotated(P, "125 so C")
    inner = _Scripted(["125 so C", "nothing", LETTERS[rotated.index(125)]])
    engine = FollowupEngine(inner, f)
    roll = engine.generate([GenerationRequest(prompt=P)], SamplingParams(n=2, max_new_tokens=8), 0)
    assert roll.response_texts == ["125 so C", "nothing"]  # the trained response is the first answer alone
    assert roll.extras[CONSISTENT] == [1.0, 0.0] and roll.extras[ASKED] == [1.0, 0.0]
    asked, params = inner.calls[1]
    assert len(asked) == 1 and asked[0].endswith("58+67=125 so ")
    assert params.temperature == 0.0 and params.max_new_tokens == 1 and params.n == 1


def test_rollout_followup_wraps_the_configured_engine():
    from pathlib import Path
    recipe = Path(__file__).resolve().parents[2] / "src/rlfold/recipes/acre.yaml"
    cfg = load_config(recipe, [])
    from rlfold.models import load_model_and_tokenizer
    from rlfold.rollout import EngineContext
    model, tok = load_model_and_tokenizer(cfg.model.path)
    engine = build_engine(cfg.rollout, EngineContext(model=model, tokenizer=tok, model_path=cfg.model.path,
                                                     dtype=torch.float32))
    assert isinstance(engine, FollowupEngine)
    task = TASKS.get("choice_arith")(held_out_size=8)
    roll = engine.generate([GenerationRequest(prompt=p) for p in task.held_out[:4]], SamplingParams(n=2), 0)
    assert len(roll.extras[CONSISTENT]) == 8 and set(roll.extras[CONSISTENT]) <= {0.0, 1.0}
