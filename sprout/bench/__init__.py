"""`sprout bench train|infer|serve`: speed measured on the machine at hand (goals live in docs/BENCHMARKS.md,
never in timed tests). Every verb prints a markdown table and, as its last line, one JSON object.

The verbs' flags are in sprout/cli.py's table; common.py holds what the three share."""
