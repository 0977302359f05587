"""Keep third-party notices off feedline's stderr; imported first by ``feedline.service``.

transformers prints advice at import time ("PyTorch was not found...": the service install never needs torch,
it only tokenizes) and per call (sequence-length advice the engine already handles through ``max_length`` and
``truncation``). Both go to stderr where feedline writes its JSON log lines. Advisory notices are switched off
by default (``TRANSFORMERS_NO_ADVISORY_WARNINGS``; an operator's own setting wins); the CLI also lowers
transformers' verbosity to errors (``quiet_third_party``).
"""

from __future__ import annotations

import os

__all__ = ["quiet_third_party"]

os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def quiet_third_party() -> None:
    """For the CLI: only errors from transformers and huggingface_hub reach stderr (unless their env says else)."""
    import logging

    for name, env in (("transformers", "TRANSFORMERS_VERBOSITY"), ("huggingface_hub", "HF_HUB_VERBOSITY")):
        if not os.environ.get(env):
            logging.getLogger(name).setLevel(logging.ERROR)
