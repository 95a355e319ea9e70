"""The online trainer's optional parts, end to end on tiny runs: dynamic sampling, KL in the reward and
the adaptive KL controller, entropy / SFT terms, selection parts, the critic (separate, shared,
pretrained, resumed), the ReMax greedy baseline, and config errors naming the offending key."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from rlfold.algos.group_filters import filter_groups
from rlfold.algos.kl import adaptive_kl_coef
from rlfold.core.config import GroupFilterSpec
from rlfold.core.config_loader import load_config
from rlfold.core.errors import ConfigError
from rlfold.core.registry import REWARDS
from rlfold.rewards import score_batch
from rlfold.rollout import SamplingParams, requests_for
from rlfold.trainers.critic import ValueTerm
from rlfold.trainers.inputs import INPUTS, StepContext
from rlfold.trainers.loop import Run, build_run
from rlfold.trainers.online import OnlineStep
from rlfold.trainers.update import EntropyTerm, KLTerm

RECIPES = Path(__file__).resolve().parents[2] / "src/rlfold/recipes"
GRPO = RECIPES / "grpo.yaml"
B, N = 4, 4
TINY = [
    "train.steps=2", f"train.prompts_per_step={B}", f"rollout.n={N}", "task.held_out_size=8", "eval.size=8",
    "log.progress=false", "checkpoint.every=0",
]
CONST = "_test_constant_reward"


def _cfg(overrides=(), recipe: Path | None = GRPO):
    return load_config(recipe, [*TINY, *overrides])


def _run(tmp_path: Path, overrides=(), recipe: Path | None = GRPO, name: str = "run") -> Run:
    return build_run(_cfg(overrides, recipe), tmp_path / name)


def _trainer(tmp_path: Path, overrides=(), recipe: Path | None = GRPO, name: str = "run") -> OnlineStep:
    return _run(tmp_path, overrides, recipe, name).trainer


def _finite(metrics: dict, *keys: str) -> None:
    for key in keys:
        assert key in metrics, f"{key} not logged (got {sorted(metrics)})"
        assert math.isfinite(metrics[key]), f"{key} = {metrics[key]}"


def _accuracy(trainer: OnlineStep, prompts, roll) -> torch.Tensor:
    name = trainer.cfg.accuracy_reward
    return score_batch([(name, 1.0)], prompts, roll.response_texts, roll.finish_reasons,
                       response_lengths=roll.response_mask.sum(1))[1][name]


@pytest.fixture
def constant_reward():
    """A reward that is 1.0 for every sample, registered for one test only."""

    def const(prompts, completions, finishes):
        return [1.0] * len(completions)

    REWARDS.register(CONST)(const)
    yield CONST
    REWARDS.unregister(CONST)


# ----- 1. dynamic sampling -----------------------------------------------------------------------


def test_dynamic_sampling_trains_only_on_groups_whose_accuracy_varies(tmp_path):
    trainer = _trainer(tmp_path, recipe=RECIPES / "dapo.yaml")
    a = trainer.cfg.algo
    assert a.group_filters == [GroupFilterSpec(name="dynamic_sampling", kwargs={"metric": "acc"})]
    assert a.max_gen_batches == 3
    some_kept = False
    for i in range(4):
        s = trainer.collector.collect(i)
        kept = int(s.metrics["rollout/kept_groups"])
        assert 1 <= s.metrics["rollout/gen_batches"] <= a.max_gen_batches
        assert 0 <= kept <= B
        if kept > 0:
            some_kept = True
            # exactly the kept groups are trained on, whole, and each one's accuracy varies
            assert s.roll.size == kept * N and len(s.prompts) == kept * N
            assert torch.equal(s.group_ids, torch.arange(kept).repeat_interleave(N))
            acc = _accuracy(trainer, s.prompts, s.roll)
            assert bool(filter_groups(acc, s.group_ids).all()), acc.view(-1, N)
            for g in range(kept):  # a group is one prompt's samples
                assert len({p.text for p in s.prompts[g * N:(g + 1) * N]}) == 1
            # fewer than B qualifying groups means every allowed round was spent
            if kept < B:
                assert s.metrics["rollout/gen_batches"] == a.max_gen_batches
    assert some_kept, "no group with varying accuracy in 4 steps; the test is vacuous"

    res = trainer.step(4)
    assert res.finite
    assert 1 <= res.metrics["rollout/gen_batches"] <= a.max_gen_batches
    assert "rollout/kept_groups" in res.metrics
    _finite(res.metrics, "actor/pg_loss", "actor/grad_norm")


def test_dynamic_sampling_off_logs_nothing(tmp_path):
    trainer = _trainer(tmp_path)
    s = trainer.collector.collect(0)
    assert "rollout/gen_batches" not in s.metrics and "rollout/kept_groups" not in s.metrics
    assert not any(k.startswith("dynamic_sampling/") for k in s.metrics)
    assert s.roll.size == B * N


@pytest.mark.parametrize("rounds", [1, 3])
def test_dynamic_sampling_with_constant_reward_falls_back_to_the_last_round(tmp_path, constant_reward, rounds):
    trainer = _trainer(tmp_path, [
        "algo.group_filters=[{name: dynamic_sampling}]", f"algo.max_gen_batches={rounds}",
        f"rewards=[{{name: {constant_reward}}}]", f"accuracy_reward={constant_reward}",
    ])
    seen: list[list[str]] = []
    generate = trainer.engine.generate

    def spy(requests, params, seed):
        seen.append([r.prompt.text for r in requests])
        return generate(requests, params, seed)

    trainer.engine.generate = spy
    s = trainer.collector.collect(0)
    assert s.metrics["rollout/gen_batches"] == rounds
    assert s.metrics["rollout/kept_groups"] == 0
    assert len(seen) == rounds
    # a full batch from the last round
    assert s.roll.size == B * N
    assert [p.text for p in s.prompts[::N]] == seen[-1]
    assert torch.equal(s.scores, torch.ones(B * N))

    res = trainer.step(1)
    assert res.finite
    assert res.metrics["rollout/kept_groups"] == 0
    assert res.metrics["rollout/gen_batches"] == rounds
    _finite(res.metrics, "actor/pg_loss", "actor/grad_norm")
    assert res.metrics["actor/pg_loss"] == 0.0  # constant rewards: every GRPO advantage is 0


# ----- 2. KL in the reward, adaptive KL -----------------------------------------------------------

KL_REWARD = ["algo.kl_coef=0.1", "algo.kl_in=reward", "algo.kl_estimator=k1"]


def test_kl_in_reward_penalises_the_rewards_not_the_loss(tmp_path):
    trainer = _trainer(tmp_path, KL_REWARD)
    assert trainer.reference is not None
    assert not any(isinstance(t, KLTerm) for t in trainer.terms())
    # A constant per-token "KL" of 1 makes the penalty on each row exactly 0.1 x its length.
    trainer.kl_estimator = lambda logp, ref: torch.ones_like(logp)
    captured: dict = {}
    collect, adv_fn = trainer.collector.collect, trainer.adv_fn

    def spy_collect(step):
        captured["s"] = s = collect(step)
        return s

    def spy_adv(rewards, group_ids, mask, **kw):
        captured["rewards"] = rewards.clone()
        return adv_fn(rewards, group_ids, mask, **kw)

    trainer.collector.collect, trainer.adv_fn = spy_collect, spy_adv
    res = trainer.step(0)
    m = res.metrics
    assert m["actor/kl_coef"] == 0.1
    assert m["actor/reward_kl"] == 1.0
    assert "actor/kl" not in m
    s = captured["s"]
    lengths = s.roll.response_mask.sum(1).float()
    assert torch.allclose(captured["rewards"], s.scores - 0.1 * lengths, atol=1e-6)
    assert not torch.allclose(captured["rewards"], s.scores)


def test_kl_in_reward_real_estimator_logs_kl_metrics(tmp_path):
    trainer = _trainer(tmp_path, KL_REWARD)
    rows = [trainer.step(i).metrics for i in range(2)]
    for m in rows:
        assert m["actor/kl_coef"] == 0.1
        _finite(m, "actor/reward_kl", "actor/pg_loss")
        assert "actor/kl" not in m
    # step 1 samples from the reference policy itself, so k1 is ~0; step 2 from an updated policy
    assert abs(rows[0]["actor/reward_kl"]) < 1e-4
    assert rows[1]["actor/reward_kl"] != rows[0]["actor/reward_kl"]


def test_kl_in_loss_adds_the_kl_term(tmp_path):
    trainer = _trainer(tmp_path, ["algo.kl_coef=0.1", "algo.kl_in=loss", "algo.kl_estimator=k1"])
    kl_terms = [t for t in trainer.terms() if isinstance(t, KLTerm)]
    assert len(kl_terms) == 1 and kl_terms[0].coef == 0.1
    m = trainer.step(0).metrics
    _finite(m, "actor/kl", "actor/reward_kl")
    assert m["actor/kl_coef"] == 0.1


def test_kl_coef_zero_has_no_reference_and_no_kl_metrics(tmp_path):
    trainer = _trainer(tmp_path, ["algo.kl_in=reward"])
    assert trainer.reference is None
    m = trainer.step(0).metrics
    assert not any(k in m for k in ("actor/kl", "actor/kl_coef", "actor/reward_kl"))


@pytest.mark.parametrize("kl_in", ["reward", "loss"])
def test_adaptive_kl_coef_follows_the_controller(tmp_path, kl_in):
    target, horizon = 0.05, 100
    trainer = _trainer(tmp_path, [
        "algo.kl_coef=0.1", f"algo.kl_in={kl_in}", "algo.kl_estimator=k1", "algo.kl_ctrl=adaptive",
        f"algo.kl_target={target}", f"algo.kl_horizon={horizon}",
    ])
    coef = 0.1
    for i in range(2):
        m = trainer.step(i).metrics
        assert m["actor/kl_coef"] == coef  # the coefficient this step used
        expected = adaptive_kl_coef(coef, m["actor/reward_kl"], target=target, horizon=horizon, n_steps=B * N)
        assert trainer.kl.coef == pytest.approx(expected, rel=1e-12, abs=0)
        assert trainer.kl.coef != coef
        coef = trainer.kl.coef
        if kl_in == "loss":
            assert [t.coef for t in trainer.terms() if isinstance(t, KLTerm)] == [coef]


def test_fixed_kl_coef_does_not_move(tmp_path):
    trainer = _trainer(tmp_path, [*KL_REWARD, "algo.kl_horizon=10"])
    trainer.step(0)
    assert trainer.kl.coef == 0.1


def test_adaptive_kl_coef_survives_resume(tmp_path):
    cfg = _cfg([*KL_REWARD, "algo.kl_ctrl=adaptive", "algo.kl_horizon=50", "checkpoint.every=1"])
    run = build_run(cfg, tmp_path / "run")
    rows = run.fit()
    assert run.loop.step == 2 and run.trainer.kl.coef != 0.1
    assert rows[-1]["actor/kl_coef"] != 0.1  # step 2 already used the coefficient adapted at step 1
    resumed = build_run(cfg, tmp_path / "run", resume=True)
    assert resumed.loop.step == 2
    assert resumed.trainer.kl.coef == run.trainer.kl.coef
    fresh = build_run(cfg, tmp_path / "fresh")
    assert fresh.trainer.kl.coef == 0.1


# ----- 3. entropy bonus, SFT term ----------------------------------------------------------------


def test_entropy_bonus_term(tmp_path):
    trainer = _trainer(tmp_path, ["algo.entropy_coef=0.01", "algo.loss_agg=token-mean"])
    assert [t.coef for t in trainer.terms() if isinstance(t, EntropyTerm)] == [0.01]
    m = trainer.step(0).metrics
    _finite(m, "actor/entropy_loss", "actor/entropy")
    # one mini-batch, one micro-batch, token-mean: the term is -coef x the token-mean entropy
    assert m["actor/entropy_loss"] == pytest.approx(-0.01 * m["actor/entropy"], rel=1e-4)
    assert m["actor/entropy_loss"] < 0


def test_no_entropy_term_by_default(tmp_path):
    trainer = _trainer(tmp_path)
    assert not any(isinstance(t, EntropyTerm) for t in trainer.terms())
    assert "actor/entropy_loss" not in trainer.step(0).metrics


def test_sft_term_logs_its_loss(tmp_path):
    trainer = _trainer(tmp_path, ["algo.sft_coef=0.5"])
    assert trainer.sft is not None and trainer.sft.coef == 0.5
    m = trainer.step(0).metrics
    _finite(m, "actor/sft_loss")
    assert m["actor/sft_loss"] > 0


def test_sft_term_changes_the_update(tmp_path):
    def params_after(name, overrides):
        t = _trainer(tmp_path, overrides, name=name)
        t.step(0)
        return torch.cat([p.detach().flatten() for p in t.model.parameters()])

    assert not torch.equal(params_after("a", []), params_after("b", ["algo.sft_coef=0.5"]))


# ----- 4. selection parts ------------------------------------------------------------------------


def test_mask_truncated_in_the_trainer(tmp_path):
    trainer = _trainer(tmp_path, ["algo.selection=[{name: mask_truncated}]", "rollout.max_new_tokens=2"])
    m = trainer.step(0).metrics
    assert m["selection/truncated_frac"] > 0
    assert m["selection/truncated_frac"] == m["response_length/clip_ratio"]


def test_mask_truncated_masks_exactly_the_truncated_rows(tmp_path):
    trainer = _trainer(tmp_path, ["algo.selection=[{name: mask_truncated}]", "rollout.max_new_tokens=2"])
    s = trainer.collector.collect(0)
    mask = s.roll.response_mask
    assert not s.unscorable.any()  # so the selection starts from the full response mask
    prep, metrics = trainer.select(_ctx(trainer, s), s, trainer.logprobs(s), s.scores, torch.zeros(mask.shape), 0)
    rows, loss_mask, weights = prep.rows, prep.loss_mask, prep.token_weights
    trunc = s.roll.truncated
    assert trunc.any()
    assert torch.equal(rows, torch.arange(s.roll.size)) and weights is None
    assert float(loss_mask[trunc].sum()) == 0.0
    assert torch.equal(loss_mask[~trunc], mask[~trunc].float())
    assert metrics["selection/truncated_frac"] == pytest.approx(float(trunc.float().mean()))


TIS_KEYS = [
    "sampling/sampling_logp_difference/mean", "sampling/sampling_logp_difference/max",
    "sampling/importance_sampling_ratio/min", "sampling/importance_sampling_ratio/mean",
    "sampling/importance_sampling_ratio/max",
]


def test_tis_plain_sampling_has_no_engine_mismatch(tmp_path):
    trainer = _trainer(tmp_path, ["algo.selection=[{name: tis}]", "rollout.temperature=1.0", "rollout.top_k=0",
                                  "rollout.top_p=1.0"])
    m = trainer.step(0).metrics
    _finite(m, *TIS_KEYS, "selection/tis_outside_frac")
    assert m["sampling/sampling_logp_difference/max"] < 1e-5
    assert m["sampling/importance_sampling_ratio/min"] == pytest.approx(1.0, abs=1e-5)
    assert m["sampling/importance_sampling_ratio/max"] == pytest.approx(1.0, abs=1e-5)


def test_tis_with_temperature_sees_the_mismatch(tmp_path):
    trainer = _trainer(tmp_path, ["algo.selection=[{name: tis, kwargs: {threshold: 2.0}}]",
                                  "rollout.temperature=0.7"])
    m = trainer.step(0).metrics
    _finite(m, *TIS_KEYS, "selection/tis_outside_frac")
    assert m["sampling/sampling_logp_difference/mean"] > 0
    assert m["sampling/sampling_logp_difference/max"] >= m["sampling/sampling_logp_difference/mean"]
    assert m["sampling/importance_sampling_ratio/min"] <= m["sampling/importance_sampling_ratio/mean"] \
        <= m["sampling/importance_sampling_ratio/max"]


def test_pf_ppo_resamples_rows(tmp_path):
    trainer = _trainer(tmp_path, recipe=RECIPES / "pf_ppo.yaml")
    assert [sp.name for sp in trainer.cfg.algo.selection] == ["pf_ppo"]
    m = trainer.step(0).metrics
    assert 0 < m["selection/unique_rows_frac"] <= 1
    _finite(m, "actor/pg_loss")


def _ctx(trainer: OnlineStep, s) -> StepContext:
    return StepContext(step=0, prompts=s.prompts, roll=s.roll, scores=s.scores, rewards=s.scores,
                       token_rewards=s.token_rewards, group_ids=s.group_ids, collector=trainer.collector,
                       tokenizer=trainer.tokenizer)


@pytest.mark.parametrize("resample_first", [False, True])
def test_after_marker_trains_only_the_confidence_tokens(tmp_path, resample_first):
    parts = ["{name: after_marker, kwargs: {marker: 'Confidence:'}}", "{name: pf_ppo, kwargs: {mode: best_random}}"]
    trainer = _trainer(tmp_path, [f"algo.selection=[{', '.join(parts[::-1] if resample_first else parts)}]"],
                       recipe=RECIPES / "rewarding_doubt.yaml")
    s = trainer.collector.collect(0)
    mask = s.roll.response_mask
    prep, metrics = trainer.select(_ctx(trainer, s), s, trainer.logprobs(s), s.scores, torch.zeros(mask.shape), 0)
    assert metrics["selection/marker_found_frac"] > 0.5
    tok = trainer.tokenizer
    checked = 0
    for j, i in enumerate(prep.rows.tolist()):
        ids = s.roll.response_ids[i, : int(mask[i].sum())].tolist()
        text = s.roll.response_texts[i]
        if "Confidence:" not in text or s.unscorable[i]:
            continue
        cut = text.index("Confidence:") + len("Confidence:")
        want = [float(len(tok.decode(ids[: t + 1], skip_special_tokens=True)) > cut) for t in range(len(ids))]
        assert prep.loss_mask[j, : len(ids)].tolist() == want, text
        assert prep.loss_mask[j, len(ids):].sum() == 0
        checked += 1
    assert checked > 0


def test_after_marker_leaves_no_gradient_on_the_answer_logits(tmp_path):
    trainer = _trainer(tmp_path, recipe=RECIPES / "rewarding_doubt.yaml")
    s = trainer.collector.collect(0)
    lp = trainer.logprobs(s)
    rewards, token_rewards, _, _ = trainer.kl_stage(s, lp)
    ctx = _ctx(trainer, s)
    adv, _ = trainer.advantage(ctx)
    prep, _ = trainer.select(ctx, s, lp, rewards, adv, 0)
    grads: list[torch.Tensor] = []
    head = trainer.model.get_output_embeddings()
    hook = head.register_full_backward_hook(lambda mod, g_in, g_out: grads.append(g_out[0].detach().clone()))
    trainer.optimizer.step = lambda *a, **k: None  # gradients only
    try:
        trainer.update(prep)
    finally:
        hook.remove()
    assert len(grads) == 1  # one mini-batch, one micro-batch in this configuration
    p = prep.roll.prompt_ids.shape[1]
    per_pos = grads[0].norm(dim=-1)  # logits predicting each token: the lean forward computes only those
    if per_pos.shape[1] > prep.loss_mask.shape[1]:  # the transformers forward: every position
        per_pos = per_pos[:, p - 1: p - 1 + prep.loss_mask.shape[1]]
    width = per_pos.shape[1]
    trained, mask = prep.loss_mask[:, :width], prep.roll.response_mask[:, :width].float()
    assert float((per_pos * trained).sum()) > 0
    assert float((per_pos * (mask - trained)).abs().sum()) == 0.0
    assert float((mask - trained).sum()) > 0  # there were answer tokens to leave out


def test_selection_parts_apply_in_order(tmp_path):
    trainer = _trainer(tmp_path, [
        "algo.selection=[{name: mask_truncated}, {name: tis}, {name: pf_ppo, kwargs: {mode: best_random}}]",
        "rollout.max_new_tokens=3", "rollout.temperature=0.8",
    ])
    m = trainer.step(0).metrics
    for key in ("selection/truncated_frac", *TIS_KEYS, "selection/unique_rows_frac"):
        assert key in m, key
    _finite(m, "actor/pg_loss")


# ----- 5. the critic -----------------------------------------------------------------------------

PPO = RECIPES / "ppo.yaml"


def _state_copy(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_separate_critic_trains_and_logs(tmp_path):
    trainer = _trainer(tmp_path, recipe=PPO)
    assert trainer.critic is not None and not trainer.critic.shared
    assert not any(isinstance(t, ValueTerm) for t in trainer.terms())
    critic_ids = {id(p) for p in trainer.critic.model.parameters()}
    assert not critic_ids & {id(p) for p in trainer.trainable}  # its own optimiser
    before = _state_copy(trainer.critic.model)
    for i in range(2):
        m = trainer.step(i).metrics
        _finite(m, "critic/value_loss", "critic/vf_explained_var", "critic/values/mean", "critic/returns/mean",
                "critic/grad_norm", "actor/pg_loss")
    after = trainer.critic.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(before["head.weight"], after["head.weight"])


def test_shared_critic_trains_its_head_with_the_policy(tmp_path):
    trainer = _trainer(tmp_path, ["critic.model=shared"], recipe=PPO)
    critic = trainer.critic
    assert critic is not None and critic.shared and critic.optimizer is None
    head = critic.head_parameters()
    assert len(head) == 2
    trainable = {id(p) for p in trainer.trainable}
    in_opt = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in trainable and id(p) in in_opt for p in head)
    # the backbone is the policy's own
    assert critic.model.backbone is trainer.model.base_model
    assert len([t for t in trainer.terms() if isinstance(t, ValueTerm)]) == 1
    assert all(float(p.detach().abs().sum()) == 0.0 for p in head)  # zero-initialised
    m = trainer.step(0).metrics
    _finite(m, "critic/value_loss", "critic/vf_explained_var", "critic/values/mean", "actor/pg_loss")
    assert float(critic.model.head.weight.detach().abs().sum()) > 0


def test_critic_pretraining_logs_in_the_step_zero_row(tmp_path):
    rows = _run(tmp_path, ["critic.pretrain_steps=2", "train.steps=1"], recipe=PPO).fit()
    assert [r["step"] for r in rows] == [0, 1]
    _finite(rows[0], "critic/pretrain/value_loss", "critic/pretrain/value_loss_first",
            "critic/pretrain/vf_explained_var")
    assert not any(k.startswith("critic/pretrain/") for k in rows[1])
    assert rows[0]["critic/pretrain/value_loss_first"] > 0


def test_shared_critic_pretraining_fits_the_head_and_keeps_the_policy(tmp_path):
    # Used to crash after the initial evaluation: Critic.update refused a shared critic.
    run = _run(tmp_path, ["critic.model=shared", "critic.pretrain_steps=2"], recipe=PPO)
    trainer = run.trainer
    policy_before = _state_copy(trainer.model)
    metrics = trainer.begin()  # the held-out evaluation, then value pretraining
    _finite(metrics, "critic/pretrain/value_loss", "critic/pretrain/value_loss_first")
    policy_after = trainer.model.state_dict()
    for k in policy_before:  # the backbone is the policy: value pretraining must leave it as it was
        assert torch.equal(policy_before[k], policy_after[k]), k
    assert float(trainer.critic.model.head.weight.detach().abs().sum()) > 0
    assert all(p.requires_grad for p in trainer.model.parameters())
    assert all(p.grad is None for p in trainer.model.parameters())
    assert run.loop.counters["init_eval"] is None
    rows = run.fit()  # init_eval is unset, so fit pretrains again, then trains
    _finite(rows[0], "critic/pretrain/value_loss", "critic/pretrain/value_loss_first")
    _finite(rows[-1], "critic/value_loss", "actor/pg_loss")


def test_critic_lam_decouples_the_targets(tmp_path):
    trainer = _trainer(tmp_path, ["critic.lam=1.0"], recipe=PPO)
    assert trainer.critic.lam == 1.0
    assert trainer.cfg.algo.advantage_kwargs["lam"] == 0.95
    assert _trainer(tmp_path, [], recipe=PPO, name="other").critic.lam == 0.95
    # the critic's targets no longer follow the actor's GAE options: only critic.* sets them
    critic = _trainer(tmp_path, ["algo.advantage_kwargs={gamma: 0.9, lam: 0.5, whiten: true, egae: true}"],
                      recipe=PPO, name="third").critic
    assert (critic.gamma, critic.lam, critic.egae) == (1.0, 0.95, False)


@pytest.mark.parametrize("model", ["separate", "shared"])
def test_critic_state_survives_resume(tmp_path, model):
    cfg = _cfg([f"critic.model={model}", "checkpoint.every=1"], recipe=PPO)
    run = build_run(cfg, tmp_path / "run")
    initial = _state_copy(run.trainer.critic.model)
    run.fit()
    trained = _state_copy(run.trainer.critic.model)
    assert any(not torch.equal(initial[k], trained[k]) for k in initial)
    resumed = build_run(cfg, tmp_path / "run", resume=True)
    assert resumed.loop.step == 2
    got = resumed.trainer.critic.model.state_dict()
    assert trained.keys() == got.keys()
    for k in trained:
        assert torch.equal(trained[k], got[k]), k
    if model == "separate":
        assert resumed.trainer.critic.optimizer.state_dict()["state"], "critic optimiser state not restored"


# ----- 6. ReMax greedy baseline ------------------------------------------------------------------


def _baseline(trainer: OnlineStep, s, perm: torch.Tensor | None = None, step: int = 0) -> torch.Tensor:
    """The ``baseline_rewards`` input of a step that collected ``s`` (rows permuted by ``perm``)."""
    idx = torch.arange(s.roll.size) if perm is None else perm
    rows = idx.tolist()
    ctx = StepContext(step=step, prompts=[s.prompts[i] for i in rows], roll=s.roll.select(idx),
                      scores=s.scores[idx], rewards=s.scores[idx], token_rewards=s.token_rewards[idx],
                      group_ids=s.group_ids[idx], collector=trainer.collector, critic=trainer.critic)
    return INPUTS.get("baseline_rewards")(ctx)


def test_remax_greedy_baseline_matches_scoring_the_greedy_completion(tmp_path):
    trainer = _trainer(tmp_path, recipe=RECIPES / "remax.yaml")
    cfg = trainer.cfg
    s = trainer.collector.collect(0)
    base = _baseline(trainer, s)
    assert base.shape == (B * N,)
    groups = base.view(B, N)
    assert torch.equal(groups, groups[:, :1].expand(B, N))  # one value per group

    uniq = s.prompts[::N]
    greedy = SamplingParams(temperature=0.0, n=1, max_new_tokens=cfg.rollout.max_new_tokens,
                            stop_token_ids=cfg.rollout.stop_token_ids, stop_strings=cfg.rollout.stop_strings)
    roll = trainer.engine.generate(requests_for(uniq), greedy, 0)
    scores, _ = score_batch([(r.name, r.weight, r.kwargs) for r in cfg.rewards], uniq, roll.response_texts,
                            roll.finish_reasons, response_lengths=roll.response_mask.sum(1))
    assert torch.equal(groups[:, 0], scores)
    # greedy decoding is deterministic: a second call (a fresh step context, nothing cached) gives the same
    assert torch.equal(_baseline(trainer, s), base)


def test_remax_baseline_with_shuffled_groups(tmp_path):
    trainer = _trainer(tmp_path, recipe=RECIPES / "remax.yaml")
    s = trainer.collector.collect(0)
    perm = torch.randperm(B * N, generator=torch.Generator().manual_seed(1))
    base = _baseline(trainer, s)
    shuffled = _baseline(trainer, s, perm)
    assert torch.equal(shuffled, base[perm])


def test_remax_step_uses_the_greedy_baseline(tmp_path):
    trainer = _trainer(tmp_path, recipe=RECIPES / "remax.yaml")
    calls = []
    collect, generate_and_score = trainer.collector.collect, trainer.collector.generate_and_score
    collected = {}

    def spy_collect(step):
        collected["s"] = s = collect(step)
        return s

    def spy(prompts, params, group_ids, step, *key):
        calls.append((len(prompts), params.temperature, params.n, [p.text for p in prompts]))
        return generate_and_score(prompts, params, group_ids, step, *key)

    trainer.collector.collect, trainer.collector.generate_and_score = spy_collect, spy
    res = trainer.step(0)
    # computed once per step (cached in the step context): one greedy response per prompt of the step
    assert calls == [(B, 0.0, 1, [p.text for p in collected["s"].prompts[::N]])]
    assert res.finite
    _finite(res.metrics, "actor/pg_loss", "actor/grad_norm")


# ----- 7. config errors --------------------------------------------------------------------------


def _error(overrides) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(GRPO, list(overrides))
    return str(info.value)


def test_unknown_selection_name_is_located_and_suggested():
    msg = _error(["algo.selection=[{name: mask_truncate}]"])
    assert "algo.selection[0].name" in msg
    assert "did you mean 'mask_truncated'?" in msg


def test_unknown_selection_name_in_a_later_item():
    msg = _error(["algo.selection=[{name: tis}, {name: pf_pop}]"])
    assert "algo.selection[1].name" in msg and "'pf_ppo'" in msg


def test_unknown_selection_kwarg_is_located():
    msg = _error(["algo.selection=[{name: tis, kwargs: {threshhold: 3}}]"])
    assert "algo.selection[0].kwargs.threshhold" in msg and "'threshold'" in msg


def test_unknown_policy_loss_kwarg_is_located_and_suggested():
    msg = _error(["algo.policy_loss=sapo", "algo.policy_loss_kwargs={tau_poss: 1}"])
    assert "algo.policy_loss_kwargs.tau_poss" in msg
    assert "did you mean 'tau_pos'?" in msg
    cfg = load_config(GRPO, ["algo.policy_loss=sapo", "algo.policy_loss_kwargs={tau_pos: 2}"])
    assert cfg.algo.policy_loss_kwargs == {"tau_pos": 2}
