"""A hand-made rollout batch for the trainer-input tests (shared by test_teacher_inputs and test_step_potential)."""

import torch

from rlfold.core.types import FINISH_STOP, Prompt, RolloutBatch


def hand_batch(tok, prompts: list[Prompt], texts: list[str]) -> RolloutBatch:
    """A rollout batch as the engine makes it: left-padded prompts, right-padded responses ending in eos."""
    p_rows = [tok(p.text, add_special_tokens=True)["input_ids"] for p in prompts]
    r_rows = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]
    n, pw, rw = len(texts), max(map(len, p_rows)), max(map(len, r_rows)) + 1  # one padding column at least
    pid = tok.pad_token_id
    p_ids, p_mask = torch.full((n, pw), pid), torch.zeros(n, pw, dtype=torch.long)
    r_ids, r_mask = torch.full((n, rw), pid), torch.zeros(n, rw, dtype=torch.long)
    for i, (p, r) in enumerate(zip(p_rows, r_rows)):
        p_ids[i, pw - len(p):], p_mask[i, pw - len(p):] = torch.tensor(p), 1
        r_ids[i, : len(r)], r_mask[i, : len(r)] = torch.tensor(r), 1
    zeros = torch.zeros(n, rw)
    return RolloutBatch(prompt_ids=p_ids, prompt_mask=p_mask, response_ids=r_ids, response_mask=r_mask,
                        sample_logprobs=zeros, policy_logprobs=zeros.clone(), finish_reasons=[FINISH_STOP] * n,
                        response_texts=list(texts))
