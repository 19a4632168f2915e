"""Reading flow logs into a prepared dataset.

`readers` turns Zeek TSV, Zeek JSON and CSV/TSV exports (optionally
gzipped) into flow records; `labels` derives classes from IoT-23 labels;
`splits` assigns flows to train, validation and test; `prepare` and
`inspect` are the entry points behind `edgedp prepare` and `edgedp inspect`.
These modules use Polars and pyarrow, so only the host imports them.
"""
