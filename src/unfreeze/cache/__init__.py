"""Exact activation caches, and the one memory policy and dropout helper they share.

With no active dropout, a part of the network none of whose parameters train is a fixed function of
its input: its outputs can be computed once per example and reused in every step and evaluation pass.

    policy.py         how much memory a cache may take (a quarter of what is free unless set); over the
                      budget: a bf16 copy where the recipe accepts one, else no cache
    dropout.py        the one list of dropout settings: set them, find the active ones
    memory.py         `unfreeze classify`: the activations where the frozen prefix ends (or pooled features)
    final_hidden.py   `unfreeze sft`: the final hidden states, when only heads on top of them train
"""
