"""Rows in, batch out: path and policy picked once per row, reports, padding, packing and batch plans."""
