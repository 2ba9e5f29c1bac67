"""specpack's SGLang classes hook SGLang by overriding methods it calls.

An SGLang upgrade that renames, removes or re-signs a hooked method would
leave specpack's override silently uncalled (or called with arguments it
does not take). These tests compare every method the two specpack classes
define with the installed SGLang's, parameter by parameter (name, kind,
default), so such an upgrade fails here first.
"""

import inspect

#: specpack's own members, which SGLang must not define (a clash would change
#: what SGLang calls)
OWN = {"SpecpackSpecAlgo": {"method"}, "SpecpackNgramWorker": set()}


def defined(cls) -> dict:
    """Members ``cls`` itself defines (functions and properties), ``__init__``
    included, other dunders not."""
    return {name: v for name, v in vars(cls).items()
            if (inspect.isfunction(v) or isinstance(v, property))
            and (name == "__init__" or not name.startswith("__"))}


def params(fn) -> list:
    if isinstance(fn, property):
        fn = fn.fget
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


def reference(name: str, *sglang_classes):
    """The SGLang member ``name`` resolves to, from the first class having it."""
    for cls in sglang_classes:
        for klass in cls.__mro__:
            if klass is not object and name in vars(klass):
                return klass, vars(klass)[name]
    return None, None


def check(ours, *sglang_classes) -> list:
    own = OWN[ours.__name__]
    problems = []
    for name, member in sorted(defined(ours).items()):
        where, theirs = reference(name, *sglang_classes)
        if name in own:
            if where is not None:
                problems.append(f"{ours.__name__}.{name} is specpack's own, but SGLang's "
                                f"{where.__qualname__} now defines it too")
            continue
        if where is None:
            problems.append(f"{ours.__name__}.{name} overrides nothing: no "
                            f"{' / '.join(c.__name__ for c in sglang_classes)} defines it")
            continue
        if isinstance(member, property) != isinstance(theirs, property):
            problems.append(f"{ours.__name__}.{name}: property vs method mismatch with "
                            f"{where.__qualname__}.{name}")
            continue
        if params(member) != params(theirs):
            problems.append(f"{ours.__name__}.{name}{inspect.signature(member)} != "
                            f"{where.__qualname__}.{name}{inspect.signature(theirs)}")
    return problems


def test_worker_overrides_match_ngram_worker(sglang_plugins_loaded):
    from sglang.srt.speculative.ngram_worker import NGRAMWorker

    from specpack.sglang_plugins.worker import SpecpackNgramWorker

    assert set(defined(SpecpackNgramWorker)) >= {
        "__init__", "_prepare_draft_tokens", "_update_ngram_corpus", "on_verify_complete_cpu",
        "clear_cache_pool"}
    assert check(SpecpackNgramWorker, NGRAMWorker) == []
    # the draft-source hooks are still what NGRAMWorker's inherited verify path calls
    source = inspect.getsource(NGRAMWorker)
    for hook in ("_prepare_draft_tokens", "_update_ngram_corpus"):
        assert f"self.{hook}(" in source, f"NGRAMWorker no longer calls self.{hook}(...)"


def test_spec_class_overrides_match_sglang(sglang_plugins_loaded):
    """``from_string`` returns a ``CustomSpecAlgo`` or a ``SpeculativeAlgorithm``
    member and callers dispatch on either without isinstance checks, so a
    method missing from ``CustomSpecAlgo`` must match the enum's."""
    from sglang.srt.speculative.spec_info import SpeculativeAlgorithm
    from sglang.srt.speculative.spec_registry import CustomSpecAlgo

    from specpack.sglang_plugins.algo import SpecpackSpecAlgo

    assert set(defined(SpecpackSpecAlgo)) >= {
        "is_ngram", "has_draft_kv", "carries_draft_hidden_states", "need_topk",
        "get_platform_worker_cls", "create_future_map", "handle_server_args",
        "resolve_max_speculative_num_draft_tokens"}
    assert check(SpecpackSpecAlgo, CustomSpecAlgo, SpeculativeAlgorithm) == []


def test_check_catches_a_changed_signature():
    """The comparison itself: a renamed parameter, a new default, a hook SGLang
    no longer has, and an own member SGLang starts defining are all reported."""

    class Base:
        def hook(self, batch, size: int = 0): ...

        def gone(self): ...

    class Ours(Base):
        def hook(self, batch, size: int = 1): ...

        def other(self, x): ...

        def method(self): ...

    class Renamed:
        def hook(self, reqs, size: int = 0): ...

        def method(self): ...

    OWN["Ours"] = {"method"}
    try:
        found = check(Ours, Base)
        assert any("Ours.hook" in p and "size: int = 1" in p for p in found)
        assert any("Ours.other overrides nothing" in p for p in found)
        assert not any("method" in p for p in found)
        found = check(Ours, Renamed)
        assert any("Ours.hook" in p and "reqs" in p for p in found)
        assert any("Ours.method is specpack's own" in p for p in found)
    finally:
        del OWN["Ours"]
