"""Learned reward models as reward functions, alone or as a conservative ensemble (Coste et al.,
"Reward Model Ensembles Help Mitigate Overoptimization", arXiv 2310.02743).

A reward model is any local sequence-classification directory (``AutoModelForSequenceClassification``
+ ``AutoTokenizer``, local files only). Its score for a sample is the logit of label 0 (the single
output of a usual reward head) on the text ``prompt.text + completion``, or, for a directory trained with
another head (``rlfold_reward_head`` in its config.json, e.g. ``sentence``), that head's score
(``rewards.reward_heads``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Sequence

import torch
from pydantic import Field

from rlfold.core.errors import ConfigError, ModelLoadError
from rlfold.core.types import Prompt
from rlfold.core.registry import REWARD_HEADS
from rlfold.rewards.base import REWARDS
from rlfold.rewards.reward_heads import DEFAULT_HEAD, HEAD_KEY, head_of, head_of_model


class RewardModel:
    """A sequence-classification model directory loaded for scoring (eval mode, no gradients).

    ``score(texts)`` runs batches of ``batch_size`` texts, right-padded: each text keeps positions
    0..L-1 and the model pools the last non-pad token, so a text's score does not depend on what it
    is batched with (a text that itself ends in the pad token id would be pooled too early).
    """

    def __init__(self, path: str | Path, *, device: str | torch.device | None = None,
                 dtype: torch.dtype = torch.float32, batch_size: int = 16) -> None:
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        self.path = Path(path).expanduser()
        if batch_size < 1:
            raise ConfigError(f"reward model {self.path}: batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        if not self.path.is_dir():
            what = "is a file, not a model directory" if self.path.is_file() else "does not exist"
            raise ModelLoadError(f"reward model directory {str(self.path)!r} {what}")
        if not (self.path / "config.json").is_file():
            files = sorted(q.name for q in self.path.iterdir())[:10]
            raise ModelLoadError(
                f"reward model directory {str(self.path)!r} has no config.json: not a Hugging Face model "
                f"directory (it holds: {', '.join(files) or 'nothing'})"
            )
        hf_logging.disable_progress_bar()
        try:
            AutoConfig.from_pretrained(self.path, local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - transformers raises many types here
            raise ModelLoadError(f"{self.path / 'config.json'} is not a usable model config: {exc}") from exc
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"could not load a tokenizer from reward model directory {self.path}: {exc}") from exc
        try:
            self.model = AutoModelForSequenceClassification.from_pretrained(
                self.path, dtype=dtype, local_files_only=True)
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"could not load a sequence-classification model from {self.path}: {exc}") from exc
        if self.tokenizer.pad_token_id is None:
            if self.tokenizer.eos_token_id is None:
                raise ModelLoadError(f"the tokenizer in reward model directory {self.path} has neither a pad "
                                     "nor an eos token to pad batches with")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        cfg = self.model.config.get_text_config() if hasattr(self.model.config, "get_text_config") else self.model.config
        if getattr(cfg, "pad_token_id", None) is None:
            cfg.pad_token_id = self.tokenizer.pad_token_id  # the model pools the last non-pad token
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.model.to(self.device).eval().requires_grad_(False)
        self.head_name = head_of_model(self.model)
        if self.head_name not in REWARD_HEADS:
            raise ModelLoadError(f"{self.path / 'config.json'}: {HEAD_KEY} {self.head_name!r} is not a registered "
                                 f"reward-model head (known: {', '.join(REWARD_HEADS.names())})")
        self.head = head_of(self.head_name)
        if self.head.num_labels > int(self.model.config.num_labels):  # a head reads outputs 0..num_labels-1
            raise ModelLoadError(f"{self.path / 'config.json'}: the {self.head_name!r} head reads "
                                 f"{self.head.num_labels} outputs, the model has num_labels="
                                 f"{self.model.config.num_labels}")

    def score(self, texts: Sequence[str]) -> torch.Tensor:
        """``[N]`` float32 scores on CPU of whole texts: the logit of label 0 at the last token (a last-token head)."""
        if self.head_name != DEFAULT_HEAD:
            raise ConfigError(f"reward model {self.path} has the {self.head_name!r} head, which scores a completion "
                              "apart from its prompt: use score_completions(prompts, completions)")
        return self.score_completions(list(texts), [""] * len(texts))

    def score_completions(self, prompts: Sequence[str], completions: Sequence[str]) -> torch.Tensor:
        """``[N]`` float32 scores on CPU of ``prompts[i] + completions[i]`` by the head the model was trained with."""
        prompts, completions = list(prompts), list(completions)
        out: list[torch.Tensor] = []
        with torch.no_grad():
            for i in range(0, len(prompts), self.batch_size):
                j = i + self.batch_size
                out.append(self.head.scores(self.model, self.tokenizer, prompts[i:j], completions[i:j],
                                            self.device).float().cpu())
        return torch.cat(out) if out else torch.zeros(0)


_CACHE: dict[tuple[str, str], RewardModel] = {}


def get_reward_model(path: str | Path, device: str | None = None) -> RewardModel:
    """The ``RewardModel`` of ``path`` on ``device``, loaded once per process and then reused."""
    key = (str(Path(path).expanduser().resolve()), str(device or "cpu"))
    if key not in _CACHE:
        _CACHE[key] = RewardModel(path, device=device)
    return _CACHE[key]


def clear_reward_model_cache() -> None:
    """Forget the loaded reward models (frees their memory; tests rebuilding a directory)."""
    _CACHE.clear()


AGGREGATES = ("mean", "wco", "uwo")
Path_ = Annotated[str, Field(min_length=1)]  # a reward model directory ("" is the unset default)


def aggregate_scores(scores: torch.Tensor, aggregate: str = "mean", uwo_lambda: float = 0.1,
                     uwo_ddof: int = 1) -> torch.Tensor:
    """Combine member scores ``[k, N]`` into ``[N]``.

    ``mean``: mean over members; ``wco`` (worst-case optimisation): min over members; ``uwo``
    (uncertainty-weighted optimisation): mean - ``uwo_lambda`` * variance over members, with
    ``uwo_ddof`` = 1 (sample variance, the reference PPO path's ``torch.var``) or 0 (population,
    its best-of-n path's ``np.var``). A single member has variance 0.
    """
    if aggregate == "mean":
        return scores.mean(0)
    if aggregate == "wco":
        return scores.min(0).values
    if aggregate == "uwo":
        if uwo_ddof not in (0, 1):
            raise ConfigError(f"reward 'reward_model': uwo_ddof must be 0 or 1, got {uwo_ddof}")
        k = scores.shape[0]
        var = scores.var(0, correction=uwo_ddof) if k > 1 else torch.zeros_like(scores[0])
        return scores.mean(0) - uwo_lambda * var
    raise ConfigError(f"reward 'reward_model': unknown aggregate {aggregate!r}; choose one of {', '.join(AGGREGATES)}")


@REWARDS.register("reward_model")
def reward_model(
    prompts: Sequence[Prompt],
    completions: Sequence[str],
    finishes: Sequence[str],
    *,
    path: Path_ | Annotated[list[Path_], Field(min_length=1)] = "",
    aggregate: Literal["mean", "wco", "uwo"] = "mean",
    uwo_lambda: float = 0.1,
    uwo_ddof: Literal[0, 1] = 1,
    device: Annotated[str, Field(min_length=1)] | None = None,
) -> list[float]:
    """Score ``prompt.text + completion`` with one reward model or an ensemble (``path`` a list).

    Ensemble ``aggregate``: ``mean``, ``wco`` = min over members, ``uwo`` = mean - ``uwo_lambda`` *
    variance over members (defaults follow the reference PPO setting: lambda 0.1, sample variance;
    the paper's best-of-n used lambda 0.5 with population variance, ``uwo_ddof=0``). Models are
    loaded once per path (local directories only).
    """
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if not paths or any(not str(p) for p in paths):
        raise ConfigError("reward 'reward_model' needs option 'path': a reward model directory or a list of them")
    if aggregate not in AGGREGATES:
        raise ConfigError(f"reward 'reward_model': unknown aggregate {aggregate!r}; choose one of {', '.join(AGGREGATES)}")
    texts = [p.text for p in prompts]
    if not texts:
        return []
    members = torch.stack([get_reward_model(p, device).score_completions(texts, completions) for p in paths])
    return [float(x) for x in aggregate_scores(members.double(), aggregate, uwo_lambda, uwo_ddof)]
