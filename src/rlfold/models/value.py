"""Value models for PPO: a transformer backbone with a scalar head, per response position."""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModel
from transformers.utils import logging as hf_logging

from rlfold.core.errors import ModelLoadError
from rlfold.core.masked import positions_from_mask as _positions
from rlfold.models.loading import resolve_model_path


class ValueModel(nn.Module):
    """V(s_t) for every response token t: a linear head on the backbone's last hidden state.

    ``backbone`` is any transformers base model (``AutoModel``); pass a policy's ``base_model`` to
    share its weights (value head on the policy backbone), or a separately loaded one.
    The value of response token t is read at the position that predicts t, i.e. the state
    before t is generated, matching the indexing of the policy's log-probs.
    """

    def __init__(self, backbone: nn.Module, hidden_size: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor,
                response_mask: torch.Tensor, response_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        device = self.head.weight.device
        n_prompt, n_resp = prompt_ids.shape[1], response_ids.shape[1]
        ids = torch.cat([prompt_ids, response_ids], dim=1).to(device)
        attend = response_mask if response_attention_mask is None else response_attention_mask
        mask = torch.cat([prompt_mask, attend], dim=1).to(device).long()
        out = self.backbone(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=False)
        hidden = out.last_hidden_state[:, n_prompt - 1 : n_prompt + n_resp - 1]
        values = self.head(hidden.to(self.head.weight.dtype)).squeeze(-1).float()
        return values.masked_fill(~response_mask.to(device).bool(), 0.0)


def load_value_model(path: str, dtype: torch.dtype = torch.float32) -> ValueModel:
    """A separate value model whose backbone is initialised from the causal-LM directory ``path``."""
    resolved = resolve_model_path(path)
    hf_logging.disable_progress_bar()
    try:
        backbone = AutoModel.from_pretrained(resolved, dtype=dtype, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types here
        raise ModelLoadError(f"could not load a value-model backbone from {resolved}: {exc}") from exc
    return ValueModel(backbone, backbone.config.hidden_size)
