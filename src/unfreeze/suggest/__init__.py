"""`unfreeze suggest`: which parameters to train, at a fraction of the exhaustive sweep's cost.

    setup.py       the one place that loads data and builds models (switches to the generic builders at merge)
    candidates.py  candidate names -> trainable parameters, start boundary, whether classify can run them
    arms.py        one candidate's resumable training run, step for step the loop of `unfreeze classify`
    halving.py     successive halving over arms within a time budget (pure, tested on scripted arms)
    cost.py        time and peak memory of a full run, predicted from measured steps
    signals.py     cheap per-layer signals: linear probes on the cached pooled features, relative gradient norms
    output.py      the ranked table, suggestion.json, the PNG and the sweep file of the top candidates
"""
