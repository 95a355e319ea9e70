"""Selection parts: which samples and tokens enter the loss, and with what weight; placeholder."""

from __future__ import annotations
