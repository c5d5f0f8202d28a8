"""The answer, taken home: a choice of what trains in other stacks' own forms, and trained models that plain
`transformers` loads.

    select.py            `unfreeze.select(model, choice)`: any Hugging Face decoder model, a PeftModel
    plan.py              a choice as a training stack needs it (modules, tensors, token rows, LoRA; plain names)
    peft.py  axolotl.py  llamafactory.py  names.py      one writer per stack (`formats.FORMATS`)
    formats.py           every writer by name; `--export DIR` of classify, sft and suggest
    classifier_folder.py classify's `final/`: AutoModelForSequenceClassification (+ a PEFT adapter for LoRA)
    card.py              `final/README.md`: the model card of every saved model
"""
