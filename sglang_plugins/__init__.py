"""specpack.sglang_plugins: SGLang adapter.

``python -m sglang.launch_server --model-path M --speculative-algorithm SPECPACK_SUFFIX``
(also SPECPACK_DATASTORE, SPECPACK_TOKEN_RECYCLING, SPECPACK_CASCADE);
settings in the JSON file named by ``SPECPACK_SGLANG_CONFIG``. See
``docs/sglang.md``. Modules here import SGLang lazily: the entry point
(:mod:`specpack.sglang_plugins.plugin`) imports it only to register.
"""
