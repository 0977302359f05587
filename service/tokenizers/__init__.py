"""A loaded tokenizer or processor and the facts derived from it once: rendering, turn markers, encoders, builtins."""
