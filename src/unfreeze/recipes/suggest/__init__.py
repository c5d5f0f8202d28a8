"""`unfreeze suggest`: which parameters to train, at a fraction of the exhaustive sweep's cost.

    config.py      its options: the search's (`SearchOptions`), and classify's or sft's
    recipe.py      setup -> signals -> a few measured steps of every candidate -> successive halving -> outputs
    setup.py       data, tokens and the base model, through classify's own functions
    candidates.py  candidate names (classify presets), their bounds, where their frozen prefix ends
    arms.py        a candidate: classify's training loop (`training.loop`), run in rounds
    halving.py     successive halving over arms within a time budget (pure, tested on scripted arms)
    cost.py        what the sweep would cost (its shared cache builds, loads, steps, evaluation passes),
                   timed in min(wall, CPU) so load does not inflate it; peak memory of a run
    signals.py     cheap per-layer signals: linear probes on the cached pooled features, relative gradient norms
    output.py      the ranked table, suggestion.json, the PNG and the sweep file of the top candidates

    sft_recipe.py  --task sft: candidates are `unfreeze sft` runs (sft's setup and loop), ranked by validation loss
    sft_arms.py    an sft candidate: the sft loop in rounds, with its own random state (bit-identical to the run)
    sft_output.py  its table, suggestion.json, PNG and sft sweep file
"""
