"""RolloutBatch: select and concat derive from the dataclass fields and carry per-row extras."""

from __future__ import annotations

from dataclasses import fields

import torch

from rlfold.core.types import FINISH_LENGTH, FINISH_STOP, RolloutBatch


def _batch(n: int, p: int, r: int, start: int = 0, extras: dict | None = None, attention: bool = False) -> RolloutBatch:
    ids = torch.arange(start, start + n * r).view(n, r)
    return RolloutBatch(
        prompt_ids=torch.full((n, p), 7), prompt_mask=torch.ones(n, p, dtype=torch.long),
        response_ids=ids, response_mask=torch.ones(n, r, dtype=torch.long),
        sample_logprobs=-ids.float(), policy_logprobs=-ids.float() / 2,
        finish_reasons=[FINISH_STOP if i % 2 else FINISH_LENGTH for i in range(n)],
        response_texts=[f"t{start + i}" for i in range(n)], entropy=ids.float() / 10,
        response_attention_mask=torch.ones(n, r, dtype=torch.long) if attention else None,
        extras=extras or {},
    )


def test_every_field_declares_how_it_pads() -> None:
    for f in fields(RolloutBatch):
        assert f.metadata.get("pad") in ("left", "right", "rows"), f.name


def test_select_takes_rows_of_every_field_and_extra() -> None:
    b = _batch(4, 2, 3, extras={"turns": [1, 2, 3, 4], "score": torch.tensor([0.1, 0.2, 0.3, 0.4])})
    s = b.select([2, 0, 2])
    assert s.response_ids.tolist() == [b.response_ids[2].tolist(), b.response_ids[0].tolist(),
                                       b.response_ids[2].tolist()]
    assert s.response_texts == ["t2", "t0", "t2"]
    assert s.finish_reasons == [b.finish_reasons[i] for i in (2, 0, 2)]
    assert torch.equal(s.entropy, b.entropy[[2, 0, 2]])
    assert s.extras["turns"] == [3, 1, 3]
    assert torch.equal(s.extras["score"], torch.tensor([0.3, 0.1, 0.3]))
    assert s.response_attention_mask is None


def test_concat_repads_and_keeps_shared_extras() -> None:
    a = _batch(2, 2, 3, extras={"turns": [1, 1], "only_a": [0, 0]})
    b = _batch(1, 4, 5, start=100, extras={"turns": [3]}, attention=True)
    c = RolloutBatch.concat([a, b], pad_id=9)
    assert c.prompt_ids.shape == (3, 4) and c.response_ids.shape == (3, 5)
    assert c.prompt_ids[0].tolist() == [9, 9, 7, 7] and c.prompt_mask[0].tolist() == [0, 0, 1, 1]
    assert c.response_ids[0].tolist() == [0, 1, 2, 9, 9] and c.response_mask[0].tolist() == [1, 1, 1, 0, 0]
    assert c.sample_logprobs[1, 3:].tolist() == [0.0, 0.0]
    assert c.response_texts == ["t0", "t1", "t100"]
    assert c.extras == {"turns": [1, 1, 3]}  # extras missing from one batch are dropped
    # one batch with an attention mask: the others fall back to their response masks
    assert c.response_attention_mask is not None
    assert c.response_attention_mask[0].tolist() == [1, 1, 1, 0, 0] and c.response_attention_mask[2].sum() == 5


def test_concat_of_one_batch_is_that_batch() -> None:
    a = _batch(2, 2, 3)
    assert RolloutBatch.concat([a], pad_id=0) is a
