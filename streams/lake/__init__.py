"""The Parquet lake: one sealed, verified file per market, channel, symbol and UTC day, in a Hive layout that
DuckDB, polars, pyarrow's dataset API and Spark read as partitions. No Django here: the manifest that vouches
for each file is kept by the streams app (streams.models.SealedDay)."""
