"""``specpack bench``: side-by-side measurement of speculative methods.

One run measures every method on the same workload, engine and machine,
always including the engine without speculation and the engine's built-in
methods, so every ratio it reports compares numbers from the same run.
"""
