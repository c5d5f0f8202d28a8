"""Exact activation caches, and the one memory policy they share.

With no active dropout, a part of the network none of whose parameters train is a fixed function of
its input: its outputs can be computed once per example and reused in every step and evaluation pass.

    policy.py         how much memory a cache may take (a quarter of what is free unless set); over the
                      budget: a bf16 copy where the recipe accepts one, else no cache
    protocol.py       what classify's loop reads from a cache
    memory.py         `unfreeze classify` in memory: the activations where the frozen prefix ends (or pooled features)
    prefix.py         the frozen prefix as block boundaries, for classify's classifier and sft's causal LM
    build.py          one pass of a prefix over token rows, into arrays (memory-mapped files or memory)
    disk.py           the shared store on disk: keyed by what the values depend on (not the pooling), built atomically
    shared.py         `unfreeze classify --feature_cache_dir`: the disk store as classify reads it
    sft_prefix.py     `unfreeze sft`: the states where everything that trains begins (in memory or on disk)
"""
