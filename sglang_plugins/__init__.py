"""specpack.sglang_plugins: SGLang adapter (``sglang.srt.plugins`` entry point).

Only engine adapters import sglang; this package is importable without it.
"""
