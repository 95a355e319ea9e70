"""``rlfold data audit FILE``: preference pairs whose labels look flipped, by reward-model ensemble disagreement.

Cross-fitting: the pairs are split into ``folds`` folds by prompt; for each fold, ``members`` small
Bradley-Terry reward models (different seeds) train on the other folds and score the fold's pairs,
so no pair is scored by a model that saw its label. A pair's preference strength is the mean mu and
std sigma over its members of r(prompt + chosen) - r(prompt + rejected) (Secrets of RLHF II); a
pair is flagged when mu + ``sigmas`` * sigma < ``threshold`` (defaults 1 and 0: even the upper end of
the ensemble's one-sigma band prefers the rejected response), or, with ``fraction``, when it is among
that fraction of lowest strength.

The report lists the counts, the rule and the most suspicious pairs (lowest mu first) as a Markdown
table; when the file has a ``flipped`` column (``rlfold data synth --flip``), it also gives the
recall of the planted flips and the false-positive rate among the other pairs.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from rlfold.core.errors import ConfigError, DataError
from rlfold.tasks.preference_data import PreferenceColumns, as_kind, load_preferences


@dataclass
class AuditSettings:
    """How the audit ensemble is trained and what it flags."""

    model: str = "tiny-arith"       # base model the reward models start from (a directory or a shipped name)
    head: str = "last_token"        # registered reward-model head of every member (REWARD_HEADS)
    members: int = 2                # reward models per fold
    folds: int = 2                  # cross-fitting folds (>= 2)
    steps: int = 600                # optimiser steps of each reward model
    batch: int = 64                 # pairs per step
    lr: float = 2e-4
    seed: int = 0
    threshold: float = 0.0          # flag mu + sigmas * sigma < threshold ...
    sigmas: float = 1.0             # (the ensemble's one-sigma band lies below the threshold)
    fraction: Optional[float] = None  # ... or the lowest-strength fraction of the pairs
    top: int = 20                   # rows of the report's table
    bad_rows: str = "error"         # a bad row stops the audit, naming file and line (or: skip, counted)
    max_length: int = 0             # prompt + completion tokens (0: the model's context)
    device: str = "cpu"

    def check(self) -> None:
        for name, value, low in (("--members", self.members, 1), ("--folds", self.folds, 2),
                                 ("--steps", self.steps, 1), ("--batch", self.batch, 1), ("--top", self.top, 0)):
            if value < low:
                raise ConfigError(f"{name} must be at least {low}, got {value}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"--lr must be a positive number, got {self.lr}")
        if self.fraction is not None and not 0.0 < self.fraction < 1.0:
            raise ConfigError(f"--fraction must be in (0, 1), got {self.fraction}")
        if not math.isfinite(self.threshold):
            raise ConfigError(f"--threshold must be a finite number, got {self.threshold}")
        if not (math.isfinite(self.sigmas) and self.sigmas >= 0):
            raise ConfigError(f"--sigmas must be a number >= 0, got {self.sigmas}")
        from rlfold.core.registry import REWARD_HEADS, UnknownPartError

        try:
            REWARD_HEADS.get(self.head)
        except UnknownPartError as exc:
            raise ConfigError(f"--head: {exc}") from None
        if self.bad_rows not in ("error", "skip"):
            raise ConfigError(f"--bad-rows must be error or skip, got {self.bad_rows!r}")


@dataclass
class AuditRow:
    """One pair of the audit: where it is, its texts, its strength and whether it was flagged."""

    where: str
    prompt: str
    chosen: str
    rejected: str
    mean: float
    std: float
    against: float                 # fraction of members that prefer the rejected response
    flagged: bool
    planted: Optional[bool] = None  # the file's ``flipped`` column, when it has one


@dataclass
class AuditReport:
    """The audit of one file: settings, the rule, every pair (in file order) and the planted-flip figures."""

    path: str
    settings: AuditSettings
    rule: str
    rows: list[AuditRow]
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def flagged(self) -> int:
        return sum(r.flagged for r in self.rows)

    def planted_figures(self) -> Optional[dict[str, float]]:
        """Recall of the planted flips and false-positive rate among the other pairs (None: no ``flipped`` column)."""
        if not self.rows or any(r.planted is None for r in self.rows):
            return None
        flipped = [r for r in self.rows if r.planted]
        clean = [r for r in self.rows if not r.planted]
        hit = sum(r.flagged for r in flipped)
        false = sum(r.flagged for r in clean)
        return {"planted": len(flipped), "clean": len(clean), "found": hit, "false_positives": false,
                "recall": hit / len(flipped) if flipped else float("nan"),
                "false_positive_rate": false / len(clean) if clean else float("nan")}

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "settings": asdict(self.settings), "rule": self.rule, "pairs": len(self.rows),
                "flagged": self.flagged, "skipped": self.skipped, "seconds": self.seconds,
                "planted": self.planted_figures(), "rows": [asdict(r) for r in self.rows]}


def audit_file(path: str | Path, settings: AuditSettings, progress: bool = True) -> AuditReport:
    """Audit the preference pairs of ``path`` (pairs, or ranked lists as their best-vs-worst pairs)."""
    import time

    from rlfold.models import load_model_and_tokenizer
    from rlfold.models.placement import resolve_device
    from rlfold.trainers.preference_datasets import check_lengths, context_length
    from rlfold.trainers.reward_modeling import (Objective, Optim, build_reward_model, cross_fit_strength,
                                                 pairs_of)

    settings.check()
    t0 = time.perf_counter()
    device = resolve_device(settings.device)
    try:
        data = load_preferences(path, "audit", PreferenceColumns(), "auto", settings.bad_rows)  # type: ignore[arg-type]
        if data.kind == "lists":
            data = as_kind(data, "pairs")
        base, tokenizer = load_model_and_tokenizer(settings.model, device=device)
        data = check_lengths(data, tokenizer, context_length(base, settings.max_length), settings.bad_rows)
    except DataError as exc:  # the data layer names the trainers' option; the audit's is a flag
        raise DataError(str(exc).replace("preference.bad_rows=skip", "--bad-rows skip")
                        .replace("raise preference.max_length if the model allows, ", "")) from None
    del base
    pairs = pairs_of(data)
    if len(set(pairs.prompts)) < settings.folds:
        raise DataError(f"{path}: {len(pairs)} pairs with {len(set(pairs.prompts))} distinct prompts cannot be "
                        f"split into {settings.folds} folds; lower --folds")
    o = Optim(batch=settings.batch, micro_batch=0, lr=settings.lr, warmup_steps=min(50, settings.steps // 10),
              schedule="cosine")
    strength = cross_fit_strength(lambda seed: build_reward_model(settings.model, tokenizer, device=device, seed=seed,
                                                                     head=settings.head),
                                  tokenizer, pairs, members=settings.members, folds=settings.folds,
                                  steps=settings.steps, o=o, obj=Objective(), seed=settings.seed, device=device,
                                  progress=progress, desc="audit ensemble")
    mean, std = strength.mean, strength.std
    if settings.fraction is not None:
        k = int(math.floor(settings.fraction * len(pairs) + 1e-9))
        order = torch.argsort(mean, stable=True)
        flag = torch.zeros(len(pairs), dtype=torch.bool)
        flag[order[:k]] = True
        rule = f"the {settings.fraction:.0%} of pairs with the lowest strength mu ({k} pairs)"
    else:
        flag = mean + settings.sigmas * std < settings.threshold
        rule = (f"strength mu + {settings.sigmas:g} sigma < {settings.threshold:g}" if settings.sigmas else
                f"strength mu < {settings.threshold:g}")
    against = (strength.diffs < 0).float().mean(0)
    rows = [AuditRow(where=pairs.where[i], prompt=pairs.prompts[i], chosen=pairs.chosen[i],
                     rejected=pairs.rejected[i], mean=float(mean[i]), std=float(std[i]), against=float(against[i]),
                     flagged=bool(flag[i]), planted=None if pairs.planted is None else pairs.planted[i])
            for i in range(len(pairs))]
    return AuditReport(path=str(path), settings=settings, rule=rule, rows=rows, skipped=dict(data.skipped),
                       seconds=time.perf_counter() - t0)


def _cell(text: str, width: int = 40) -> str:
    """A table cell: one line, pipes escaped, cut to ``width`` characters."""
    s = text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", "\\n").replace("\r", "\\r")
    return s if len(s) <= width else s[: width - 1] + "…"


def render_markdown(report: AuditReport) -> str:
    """The report a person reads: what was done, the counts, the rule, and the most suspicious pairs."""
    s = report.settings
    n, flagged = len(report.rows), report.flagged
    lines = [f"# Preference-data audit: {report.path}", "",
             f"- pairs audited: {n}" + (f" (skipped rows: {sum(report.skipped.values())}: "
                                         + ", ".join(f"{k}: {v}" for k, v in sorted(report.skipped.items())) + ")"
                                         if report.skipped else ""),
             f"- ensemble: {s.members} reward model(s) per fold x {s.folds} folds, cross-fitted (each pair is scored "
             f"only by models that never trained on it); {s.steps} steps of {s.batch} pairs each, lr {s.lr:g}, from "
             f"{s.model}, {s.head} head, seed {s.seed}",
             "- strength: mu and sigma = mean and std over the members of r(prompt + chosen) - r(prompt + rejected); "
             "'against' = share of members preferring the rejected response",
             f"- flagged: {flagged} of {n} pairs ({flagged / max(n, 1):.1%}), rule: {report.rule}"]
    fig = report.planted_figures()
    if fig is not None:
        lines.append(f"- the file's `flipped` column marks {fig['planted']} pairs: the audit flagged {fig['found']} "
                     f"of them (recall {fig['recall']:.1%}) and {fig['false_positives']} of the {fig['clean']} others "
                     f"(false-positive rate {fig['false_positive_rate']:.1%})")
    lines.append(f"- time: {report.seconds:.0f} s")
    top = sorted(report.rows, key=lambda r: r.mean)[: s.top]
    if top:
        marks = fig is not None
        lines += ["", f"## The {len(top)} most suspicious pairs (lowest strength first)", "",
                  "| # | where | prompt | chosen | rejected | strength mu ± sigma | against | flagged |"
                  + (" planted flip |" if marks else ""),
                  "|---|---|---|---|---|---|---|---|" + ("---|" if marks else "")]
        for i, r in enumerate(top, 1):
            lines.append(f"| {i} | {_cell(r.where, 60)} | {_cell(r.prompt)} | {_cell(r.chosen)} | {_cell(r.rejected)} "
                         f"| {r.mean:+.3f} ± {r.std:.3f} | {r.against:.0%} | {'yes' if r.flagged else 'no'} |"
                         + (f" {'yes' if r.planted else 'no'} |" if marks else ""))
    return "\n".join(lines) + "\n"


def write_audit(report: AuditReport, out: str | Path | None = None, json_out: str | Path | None = None) -> list[Path]:
    """Write the Markdown report to ``out`` and the per-pair JSON to ``json_out``; returns what was written."""
    written = []
    for target, text in ((out, lambda: render_markdown(report)),
                         (json_out, lambda: json.dumps(report.as_dict(), indent=1) + "\n")):
        if target is None:
            continue
        p = Path(target).expanduser()
        try:
            p.write_text(text(), encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot write the audit report {p}: {exc.strerror or exc}") from None
        written.append(p)
    return written


__all__ = ["AuditReport", "AuditRow", "AuditSettings", "audit_file", "render_markdown", "write_audit"]
