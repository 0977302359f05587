"""Chat formats of public model families, written for the tests, with an independent check of supervised text.

- ``families/*.jinja``: one template per family, each reproducing a published format (the source read is named at
  the top of each file); ``registry.FAMILIES`` says per family which real tokenizer it pairs with, its bos/eos, the
  text that closes an assistant turn, what the format supports and which failure classes of issue 16 it exercises.
- ``tokenizers.family_tokenizer``: the real tokenizer (a packaged vocabulary) with the family's tokens and template.
- ``conversations``: hypothesis strategies for rows each template accepts.
- ``oracle``: the expected supervised text of every assistant turn, derived from renders alone (never from feedline's
  engine), and ``check_labels``.
- ``survey``: ``python -m tests.support.chat_formats.survey`` prints family -> rows rendered / labelled / correct.
"""
