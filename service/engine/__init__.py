"""The text engine: conversations in, per-sample token ids and supervision masks out; pure, no I/O."""
