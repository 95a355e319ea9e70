"""The preference step: cached reference, whole examples per micro-batch, kinds, inputs, refresh, resume."""

import json
import math

import pytest
import torch

from rlfold.core.config import RunConfig
from rlfold.core.errors import ConfigError, DataError
from rlfold.trainers.loop import build_run
from rlfold.trainers.preference import EpochSampler, PreferenceStep

SMALL = {"task": {"held_out_size": 8}, "eval": {"size": 8, "pass_k": 2},
         "log": {"progress": False}, "checkpoint": {"every": 0}, "threads": 1,
         "train": {"steps": 2, "prompts_per_step": 8, "lr": 1e-4}}


def _pairs_file(tmp_path, n=24):
    rows = [{"prompt": f"{a}+{a + 1}=", "chosen": str(2 * a + 1), "rejected": str(2 * a + 2)} for a in range(10, 10 + n)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _lists_file(tmp_path, n=16):
    rows = [{"prompt": f"{a}+{a}=", "responses": [str(2 * a), str(2 * a + 1), "7"], "scores": [1.0, 0.5, 0.0]}
            for a in range(10, 10 + n)]
    path = tmp_path / "lists.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cfg(tmp_path, **pref):
    data = {**SMALL, "trainer": "preference", "run_dir": str(tmp_path / "run"),
            "preference": {"train_file": str(_pairs_file(tmp_path)), "held_out_fraction": 0.25, **pref}}
    return RunConfig.model_validate(data)


def test_first_dpo_step_sees_zero_log_ratios(tmp_path):
    step = PreferenceStep(_cfg(tmp_path))
    res = step.step(0)
    assert res.finite
    assert res.metrics["loss"] == pytest.approx(math.log(2), abs=1e-5)  # rho = 0: the policy is the reference
    assert abs(res.metrics["rewards/margins"]) < 1e-5
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "logps/chosen", "logps/rejected",
                "grad_norm", "actor/lr"):
        assert key in res.metrics
    assert step.step(1).metrics["rewards/margins"] > 0  # one update moved chosen above rejected


def _grads(step, indices, micro):
    step.cfg.train.micro_batch_size = micro
    step.optimizer.zero_grad(set_to_none=True)
    ok, _ = step.backward(indices, 0)
    assert ok
    return torch.cat([p.grad.flatten() for p in step.trainable])


@pytest.mark.parametrize("loss, kwargs", [("dpo", {}), ("ipo", {}), ("simpo", {}), ("lipo_lambda", {}),
                                          ("kto", {"z0": 0.0})])  # kto's batch z0 couples a micro-batch: fixed here
def test_gradient_does_not_depend_on_the_micro_batch_size(tmp_path, loss, kwargs):
    step = PreferenceStep(_cfg(tmp_path, loss=loss, loss_kwargs=kwargs))
    idx = list(range(8))
    whole, split = _grads(step, idx, 0), _grads(step, idx, 2)
    assert float(whole.norm()) > 0
    assert float((whole - split).norm() / whole.norm()) < 1e-5


def test_reference_free_losses_hold_no_reference_cache(tmp_path):
    step = PreferenceStep(_cfg(tmp_path, loss="simpo"))
    assert step.cache.sums == {}
    assert step.step(0).finite


def test_unpaired_loss_on_pairs_data_unpairs_them(tmp_path):
    step = PreferenceStep(_cfg(tmp_path, loss="kto"))
    assert step.train_data.kind == "unpaired"
    assert len(step.encoded["train"]) == 2 * 18  # 18 training pairs, each two unpaired examples
    res = step.step(0)
    assert res.finite and res.metrics["loss"] == pytest.approx(0.5, abs=1e-4)  # rho = z0 = 0: 1 - sigma(0)


def test_listwise_loss_on_ranked_lists(tmp_path):
    cfg = _cfg(tmp_path, loss="lipo_lambda", train_file=str(_lists_file(tmp_path)))
    step = PreferenceStep(cfg)
    assert step.train_data.kind == "lists" and step.encoded["train"][0].scores == [1.0, 0.5, 0.0]
    assert step.step(0).finite
    pairwise = PreferenceStep(_cfg(tmp_path, loss="dpo", train_file=str(_lists_file(tmp_path))))
    assert pairwise.train_data.kind == "pairs"  # a list becomes its best-vs-worst pair


def test_online_kl_input_and_bco_shift(tmp_path):
    hypo = PreferenceStep(_cfg(tmp_path, loss="hypo", online_samples=2))
    assert hypo.reference is not None
    assert hypo.step(0).finite
    bco = PreferenceStep(_cfg(tmp_path, loss="bco"))
    bco.step(0)
    assert bco.running["reward_count"] > 0


def test_reference_refresh_recomputes_the_cache(tmp_path):
    step = PreferenceStep(_cfg(tmp_path, loss="dpo", reference_update_every=1))
    before = [list(r) for r in step.cache.sums["train"]]
    res = step.step(0)
    assert res.metrics["reference/refreshed"] == 1.0 and step.cache.refreshes == 1
    assert step.cache.sums["train"] != before
    second = step.step(1)  # the new reference is the updated policy: log-ratios start from 0 again
    assert second.metrics["loss"] == pytest.approx(math.log(2), abs=1e-4)


def test_sequence_longer_than_the_context_is_named_or_skipped(tmp_path):
    cfg = _cfg(tmp_path, max_length=12, held_out_fraction=0)
    with open(cfg.preference.train_file, "a") as fh:
        fh.write(json.dumps({"prompt": "1234567+1234567=", "chosen": "2469134", "rejected": "1"}) + "\n")
    with pytest.raises(DataError, match=r"pairs.jsonl:25: prompt \(\d+ tokens\) \+ longest completion"):
        PreferenceStep(cfg)
    cfg.preference.bad_rows = "skip"
    step = PreferenceStep(cfg)
    assert step.train_data.skipped["longer than the model's context"] > 0
    assert step.begin()["data/skipped_rows"] > 0


def test_length_normalising_loss_refuses_mean_reduction(tmp_path):
    with pytest.raises(ValueError, match="normalises by the completion lengths itself"):
        _cfg(tmp_path, loss="simpo", logp_reduction="mean")


def test_several_processes_are_refused(tmp_path):
    cfg = _cfg(tmp_path)
    cfg.train.strategy = "ddp"
    with pytest.raises(ConfigError, match="one process"):
        PreferenceStep(cfg)


def test_epoch_sampler_covers_each_example_once_per_epoch_and_resumes():
    s = EpochSampler(10, seed=3)
    first = s.next(10)
    assert sorted(first) == list(range(10))
    s.next(4)
    state = s.state_dict()
    rest = s.next(6)
    t = EpochSampler(10, seed=3)
    t.load_state_dict(state)
    assert t.next(6) == rest


@pytest.mark.slow
def test_a_run_resumes_exactly_and_records_the_dataset(tmp_path):
    cfg = _cfg(tmp_path)
    cfg.train.steps, cfg.checkpoint.every = 4, 2
    full = build_run(cfg, tmp_path / "full").fit()
    cfg2 = _cfg(tmp_path)
    cfg2.train.steps, cfg2.checkpoint.every = 4, 2
    first = build_run(cfg2.model_copy(update={"train": cfg2.train.model_copy(update={"steps": 2})}),
                      tmp_path / "half")
    first.fit()
    resumed = build_run(cfg2, tmp_path / "half", resume=True).fit()
    last_full = [r for r in full if r["step"] == 4][0]
    last_resumed = [r for r in resumed if r["step"] == 4][0]
    for key in ("loss", "rewards/margins", f"val/arith/win_rate"):
        assert last_full[key] == pytest.approx(last_resumed[key], abs=1e-6), key
    fp = json.loads((tmp_path / "full" / "data_fingerprint.json").read_text())
    assert any(f["path"].endswith("pairs.jsonl") and len(f["sha256"]) == 64 for f in fp["files"])
    assert (tmp_path / "full" / "final" / "model.safetensors").is_file()
