"""A base model's own forward pass, cut at block boundaries.

Every stage runs *inside* the model's forward, so each block receives exactly what that forward gives it: the
mask of its layer type (causal, sliding-window, chunked; SDPA or eager format), the position embeddings of its
layer type (one rotary module per type, or a rotary module whose forward takes the type), ALiBi tensors,
position ids. Nothing is re-derived here. What a stage changes is only which blocks actually compute:

* `embed(ids)`: the forward up to the first block; its input is the hidden state at boundary 0.
* `run(hidden, first, stop)`: the forward with blocks before `first` short-circuited (for the call, a
  stand-in takes each one's place in its list and hands its input on unchanged: no work), the output of
  block `first - 1` replaced by `hidden` (or, for `first = 0`, the input of block 0), blocks `first ..
  stop-1` computed, and the pass stopped after block `stop - 1` (or run to the end, through the final norm,
  when the last stage is asked for). The work before the blocks runs on the token ids (so inputs computed
  from them, such as Gemma 4's per-layer embeddings, are the model's own), or on zeros of the embeddings'
  shape where there are none (GPT-2 under the reference's semantics).
* `run_last_block_as(hidden, first, last_block)`: the same with the last block computed by a function of its
  input and every argument the forward passes it, by name (the one-position last block of
  `unfreeze.models.reduced_block`), and the stage after the blocks in the same pass.

Hooks and stand-ins are installed for one call and removed after it. The structure (which modules run
before and after the blocks, what a block returns) comes from one traced pass over four tokens (`_trace`); on
the meta device, where no forward can run, from the order the modules are registered in.
"""

from __future__ import annotations

import contextlib
import inspect

import torch
from torch import nn

from unfreeze.errors import UsageError
from unfreeze.models.structure import (
    Structure,
    first_line,
    layer_mask_kinds,
    order_by_registration,
    read_structure,
    text_config,
)


class _Stop(Exception):
    """Ends the model's forward early, carrying what the stage wanted out of it."""

    def __init__(self, value):
        super().__init__("stage boundary reached")
        self.value = value


class _Passthrough(nn.Module):
    """Stands in for a block a stage skips, for one call: no computation, no parameters, no hooks of the block.
    Any other attribute reads through to the block (some forwards read a layer's attention type in the loop)."""

    def __init__(self, block: nn.Module, forward):
        super().__init__()
        object.__setattr__(self, "_block", block)  # not registered: its parameters are not this module's
        self._forward = forward

    def forward(self, *args, **kwargs):
        return self._forward(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_block"), name)


def _takes(function, name: str) -> bool:
    return name in inspect.signature(function).parameters


class StagedForward:
    """`embed`, `run` and `run_last_block_as` over a base model whose structure is read (and traced) on construction.

    `key_mask` (batch, length), True at real tokens, is None for the reference's GPT-2 semantics (no padding
    mask: the model's forward then makes its plain causal mask). `causal=False` hands the forward a bidirectional
    mask over the real tokens, made by transformers' `create_bidirectional_mask`.
    """

    def __init__(self, body: nn.Module, structure: Structure | None = None):
        self.body = body
        self.config = text_config(body)
        self.structure = structure if structure is not None else read_structure(body)
        forward = body.forward
        missing = [name for name in ("inputs_embeds", "attention_mask") if not _takes(forward, name)]
        if missing:
            raise UsageError(f"--model: {type(body).__name__}'s forward takes no {' or '.join(missing)}, so classify "
                             "cannot start it at a block; this architecture is not supported")
        self.call_options = {"use_cache": False} if _takes(forward, "use_cache") else {}
        self._signatures = [inspect.signature(block.forward) for block in self.structure.blocks]
        self._hidden_name = [next(iter(signature.parameters), "hidden_states") for signature in self._signatures]
        self._trace()
        self.mask_kinds = layer_mask_kinds(self.config, len(self.structure.blocks))

    # --- the traced pass ----------------------------------------------------------------------------
    def _registered_order(self) -> None:
        """On the meta device no forward can run (masks read tensor values): the order in which the modules are
        registered stands in for the order they run in (`structure.order_by_registration`)."""
        order_by_registration(self.body, self.structure)

    @torch.no_grad()
    def _trace(self) -> None:
        """Which modules run before/between/after the blocks, what each block returns, the widths."""
        if self.structure.token_embedding.weight.is_meta:
            return self._registered_order()
        s, order, outputs, handles = self.structure, [], {}, []
        for index, block in enumerate(s.blocks):
            handles.append(block.register_forward_pre_hook(lambda m, a, i=index: order.append(("block", i))))
            handles.append(block.register_forward_hook(lambda m, a, out, i=index: outputs.setdefault(i, out)))
        for module in s.others:
            handles.append(module.register_forward_pre_hook(lambda m, a, x=module: order.append(("other", x))))
        was_training = self.body.training
        vocab = s.token_embedding.weight.shape[0]
        ids = (torch.arange(4, device=s.token_embedding.weight.device) % vocab)[None]
        try:
            self.body.eval()
            final = self._call(self._inputs(ids.shape, torch.ones_like(ids, dtype=torch.bool), True, input_ids=ids))
        except Exception as err:  # noqa: BLE001 - the model's own forward failed: one line, not a traceback
            raise UsageError(f"--model: {type(self.body).__name__}'s forward fails on four tokens "
                             f"({first_line(err)}); this architecture is not supported") from None
        finally:
            self.body.train(was_training)
            for handle in handles:
                handle.remove()
        calls = [i for kind, i in order if kind == "block"]
        if calls != list(range(len(s.blocks))):
            raise UsageError(f"--model: {type(self.body).__name__} does not run each of its {len(s.blocks)} blocks "
                             "once, in order; classify cannot cut its forward into stages")
        positions = [i for i, (kind, _) in enumerate(order) if kind == "block"]
        for module in dict.fromkeys(m for kind, m in order if kind == "other"):
            seen = [i for i, (kind, m) in enumerate(order) if m is module]
            group = s.after if min(seen) > positions[-1] else s.before if max(seen) < positions[0] else s.within
            group.append(module)
        s.before += [m for m in s.others if m not in s.before + s.after + s.within]  # never called: judged early
        s.block_outputs = [None if isinstance(outputs[i], torch.Tensor) else len(outputs[i])
                           for i in range(len(s.blocks))]
        first = outputs[0] if isinstance(outputs[0], torch.Tensor) else outputs[0][0]
        s.width, s.output_width = first.shape[-1], final.shape[-1]

    # --- one call of the model's forward ----------------------------------------------------------------
    def _inputs(self, shape, key_mask: torch.Tensor | None, causal: bool, input_ids: torch.Tensor | None = None,
                like: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None) -> dict:
        """The forward's keyword arguments: the ids or embeddings (else zeros in place of the embeddings), the mask."""
        weight = self.structure.token_embedding.weight
        if inputs_embeds is not None:
            inputs = {"inputs_embeds": inputs_embeds}
        elif input_ids is not None:
            inputs = {"input_ids": input_ids}
        else:  # what the forward computes from these before the blocks is replaced at the boundary
            device = like.device if like is not None else weight.device
            inputs = {"inputs_embeds": torch.zeros(*shape, weight.shape[1], dtype=weight.dtype, device=device)}
        mask = key_mask.long() if key_mask is not None else None
        if not causal:
            from transformers.masking_utils import create_bidirectional_mask

            shaped = torch.empty(*shape, 0, dtype=weight.dtype, device=weight.device)
            mask = create_bidirectional_mask(config=self.config, inputs_embeds=shaped, attention_mask=key_mask,
                                             allow_is_bidirectional_skip=False)
        return {**inputs, "attention_mask": mask, **self.call_options}

    def _call(self, inputs: dict, enter: int = 0, hidden: torch.Tensor | None = None, stop: int | None = None,
              replace: dict | None = None):
        """The model's forward on `inputs`: `hidden` replaces the hidden state at boundary `enter` (blocks before it
        stand in, handing their input on), `replace` maps block indices to functions computing them instead
        (from the arguments the forward passes); stopped after block `stop - 1`, or else run to the end."""
        blocks, handles, stand_ins = self.structure.blocks, [], dict(replace or {})
        if hidden is not None and enter == 0:
            handles.append(blocks[0].register_forward_pre_hook(self._replace_input(hidden), with_kwargs=True))
        for index in range(enter):
            stand_ins.setdefault(index, self._short_circuit(index, hidden if index == enter - 1 else None))
        if stop is not None:
            handles.append(blocks[stop - 1].register_forward_hook(self._stop_after))
        keys = list(blocks._modules)
        saved = {keys[index]: blocks[index] for index in stand_ins}
        for index, forward in stand_ins.items():
            blocks._modules[keys[index]] = _Passthrough(blocks[index], forward)
        try:
            return self.body(**inputs)[0]
        except _Stop as stopped:
            return stopped.value
        finally:
            for handle in handles:
                handle.remove()
            blocks._modules.update(saved)

    def _hidden_of(self, index: int, args: tuple, kwargs: dict) -> torch.Tensor:
        return args[0] if args else kwargs[self._hidden_name[index]]

    def _arguments(self, index: int, args: tuple, kwargs: dict) -> dict:
        """Every argument the forward passes block `index`, by the name its forward gives it."""
        arguments = dict(self._signatures[index].bind(*args, **kwargs).arguments)
        arguments.update(arguments.pop("kwargs", None) or {})
        return arguments

    def _as_output(self, index: int, hidden: torch.Tensor):
        """`hidden` in the form block `index` returns (a tensor, or a tuple whose first item is the hidden state)."""
        size = self.structure.block_outputs[index]
        return hidden if size is None else (hidden, *([None] * (size - 1)))

    def _short_circuit(self, index: int, replacement: torch.Tensor | None):
        def forward(*args, **kwargs):
            hidden = replacement if replacement is not None else self._hidden_of(index, args, kwargs)
            return self._as_output(index, hidden)
        return forward

    def _replace_input(self, hidden: torch.Tensor):
        def hook(module, args, kwargs):
            if args:
                return (hidden, *args[1:]), kwargs
            return args, {**kwargs, self._hidden_name[0]: hidden}
        return hook

    @staticmethod
    def _stop_after(module, args, output):
        raise _Stop(output if isinstance(output, torch.Tensor) else output[0])

    # --- stages -----------------------------------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor | None, key_mask: torch.Tensor | None = None,
              inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """The hidden state the forward hands block 0 (embeddings, position embeddings, embedding norms...), from the
        token ids or, as a pause model runs its LM (`ControlTokenLM.embed`), from given token embeddings."""
        def stop(*args, **kwargs):
            raise _Stop(self._hidden_of(0, args, kwargs))

        shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:2]
        inputs = self._inputs(shape, key_mask, True, input_ids=input_ids, inputs_embeds=inputs_embeds)
        return self._call(inputs, replace={0: stop})

    def run(self, hidden: torch.Tensor, first: int, stop: int, key_mask: torch.Tensor | None,
            causal: bool, final_norm: bool, input_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Blocks `first .. stop-1` (0-based) on `hidden`, then what the forward does after the blocks if asked
        (`final_norm` needs `stop` = the number of blocks)."""
        blocks = len(self.structure.blocks)
        if final_norm and stop != blocks:
            raise ValueError("the final stage follows the last block")
        if first >= stop and not final_norm:
            return hidden
        inputs = self._inputs(hidden.shape[:2], key_mask, causal, input_ids=input_ids, like=hidden)
        return self._call(inputs, enter=first, hidden=hidden, stop=None if final_norm else stop)

    def run_last_block_as(self, hidden: torch.Tensor, first: int, last_block, key_mask: torch.Tensor | None,
                          causal: bool, input_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Blocks `first ..` on `hidden` with the last one computed by `last_block(its input, its arguments by
        name) -> its output`, then the stage after the blocks: the forward's output, in one pass."""
        index = len(self.structure.blocks) - 1

        def forward(*args, **kwargs):
            return self._as_output(index, last_block(self._hidden_of(index, args, kwargs),
                                                     self._arguments(index, args, kwargs)))

        inputs = self._inputs(hidden.shape[:2], key_mask, causal, input_ids=input_ids, like=hidden)
        return self._call(inputs, enter=first, hidden=hidden, replace={index: forward})


def traced_structure(body: nn.Module) -> Structure:
    """`body`'s structure with what runs before, between and after its blocks read from a traced pass: of
    `body` itself where it has weights, else of a small twin (the same configuration with its sizes shrunk and
    every switch kept: the same modules at the same paths); registration order where neither can run.

    Naming parameters needs no forward, but the order modules are registered in is not always the order they
    run in: OPT registers its final norm before its blocks."""
    if not body_is_meta(body):
        with contextlib.suppress(UsageError):
            return StagedForward(body).structure
        return order_by_registration(body, read_structure(body))
    structure = read_structure(body)
    try:
        twin = _small_twin(body)
        traced = StagedForward(twin).structure
    except Exception:  # noqa: BLE001 - an architecture that cannot be built small or traced: registration order
        return order_by_registration(body, structure)
    paths = {id(module): name for name, module in twin.named_modules()}

    def same(modules: list[nn.Module]) -> list[nn.Module]:
        return [body.get_submodule(paths[id(m)]) for m in modules]

    structure.before, structure.after, structure.within = same(traced.before), same(traced.after), same(traced.within)
    structure.block_outputs = list(traced.block_outputs)
    structure.width = structure.output_width = structure.token_embedding.weight.shape[1]
    return structure


def body_is_meta(body: nn.Module) -> bool:
    return any(p.is_meta for p in body.parameters())


def _small_twin(body: nn.Module) -> nn.Module:
    """A small model with random weights of `body`'s architecture and switches (models/architectures.py sizes)."""
    from transformers import AutoModel

    from unfreeze.models.architectures import _tiny_kwargs

    config = body.config
    small = type(config)(**{**config.to_dict(), **_tiny_kwargs(type(config), config)})
    small._attn_implementation = config._attn_implementation
    with torch.device("cpu"):
        return AutoModel.from_config(small).eval()
