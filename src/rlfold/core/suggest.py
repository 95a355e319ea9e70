"""Suggest the valid name a user most likely meant (config keys, registered part names)."""

from __future__ import annotations

import difflib

# Names other libraries (TRL, verl) use for our keys; suggested when someone types them.
_ALIASES = {
    "learning_rate": "lr", "num_generations": "n", "max_steps": "steps", "total_steps": "steps",
    "max_completion_length": "max_new_tokens", "max_tokens": "max_new_tokens", "beta": "kl_coef",
    "max_grad_norm": "grad_clip", "epsilon": "clip_low", "epsilon_high": "clip_high",
    "per_device_train_batch_size": "micro_batch_size", "batch_size": "prompts_per_step",
}


def closest(word: str, candidates: list[str]) -> str | None:
    """The valid name the user most likely meant: same name in other case, a known alias, the name with a
    prefix or suffix added (``lr_rate`` -> ``lr``), else the closest spelling; ``None`` if nothing is close."""
    if not candidates:
        return None
    low = word.lower()
    for c in candidates:
        if c.lower() == low:
            return c
    if _ALIASES.get(low) in candidates:
        return _ALIASES[low]
    affixed = [c for c in candidates if low.startswith(c.lower() + "_") or low.endswith("_" + c.lower())]
    if affixed:
        return max(affixed, key=len)
    close = difflib.get_close_matches(word, candidates, n=1)
    return close[0] if close else None
