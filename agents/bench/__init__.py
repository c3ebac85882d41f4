"""`liquid-drones bench`: simulator (`env`), core (`cores`), training-throughput (`train`) and
learning (`learn`) benchmarks; each prints a table and writes CSV, JSON and PNG files."""
