"""The ``nemo`` label policy on text rows: NeMo AutoModel's outputs, reproduced exactly."""
