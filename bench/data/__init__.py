"""Rows from disk to batches: the data folder, the `files:` suite's reader, one domain's rows as a
grid uses them, and tokenisation and batching."""
