"""Models: the embedded tiny model and loading of any Hugging Face causal-LM directory."""

from rlfold.models.loading import disable_dropout, load_model_and_tokenizer, resolve_model_path

__all__ = ["disable_dropout", "load_model_and_tokenizer", "resolve_model_path"]
