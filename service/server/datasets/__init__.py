"""What a dataset is made of, below ``server/_datasets.py`` (the plan and the opened datasets):

- ``_files``: where the files are (local roots, globs, saved HF directories, object stores) and the fingerprint;
- ``_lines``: the JSONL row index (a streaming scan, kept on disk, read with ``pread``);
- ``_readers``: rows of one file by index (JSONL through ``_lines``, Parquet row groups, Arrow record batches);
- ``_order``: the epoch's visiting order (keyed Feistel permutation, windows over blocks).
"""
