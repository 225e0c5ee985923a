"""An eager inference forward recorded once and run again as one C++ call:
:func:`record_op_plan` and :class:`PlannedGraphModule`.

From Python each operator call of a deployed model costs about 20 us once the convolutions have
flushed the interpreter's data from the caches: over GoogLeNet-Slim's 44 calls, 10-15% of a batch-1
forward that frozen TorchScript, whose interpreter is C++, does not pay (docs/kernels.md, "Eager
forward as one C++ call"). A plan is the forward's dispatcher calls, recorded in one pass under a
``TorchDispatchMode``, that ``deeprebirth._C.OpPlan`` makes again without Python between them. The
calls are the eager forward's own: same operators, arguments and kernels, so the outputs are equal
bit for bit.

A plan stands for the Python the forward ran, so it is used only while that Python would run the
same way: the same input sizes, strides, dtypes and devices, no gradient, no autocast, tracing,
compiling, hooks or modes, every layer in eval mode, the same parameter, buffer and submodule
objects, and each packed layer on the same weight values and thresholds
(``PackedConv2d._plan_state``). Calls that read a value Python could branch on (``.item()``, an
output whose shape depends on the data) make no plan: the forward stays eager, and
:meth:`PlannedGraphModule.plan_report` says why. Python that reads other state (a global variable,
Python's ``random``, the clock) is fixed at the recording, as in any trace.
"""

from __future__ import annotations

import operator
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_leaves, tree_unflatten

from deeprebirth.ops._library import load_extension

#: Calls that return a new buffer with undefined values.
_NEW_BUFFERS = {
    torch.ops.aten.empty.memory_format,
    torch.ops.aten.empty_like.default,
    torch.ops.aten.empty_strided.default,
    torch.ops.aten.new_empty.default,
    torch.ops.aten.new_empty_strided.default,
}

#: What an :class:`OpPlanRun` returns instead of an output when its guards fail.
STALE = object()
#: ... and when the eager forward would choose another kernel for these input values.
DECLINED = object()


class PlanRefused(Exception):
    """Why a forward cannot be recorded as a plan (the message names the call)."""


class _Recorder(TorchDispatchMode):
    """Runs every dispatcher call as usual and keeps ``(op, args, kwargs, output)``."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.calls.append((func, args, kwargs, out))
        return out


@dataclass
class OpPlanRun:
    """A recorded forward: the C++ plan, and how its output tensors and the recorded constants
    fill the forward's output structure."""

    plan: Any
    outputs: list[tuple[bool, Any]]  # (from the plan, index into its outputs or the constant)
    structure: Any  # the output's pytree spec
    #: the modules whose forward ran during the recording (their hooks would run again)
    called: list[nn.Module] = field(default_factory=list)
    #: the output is one tensor the plan computes
    single: bool = False

    @property
    def steps(self) -> int:
        """The number of operator calls the plan makes."""
        return self.plan.step_count

    def __call__(self, inputs: Sequence[torch.Tensor]) -> Any:
        """The forward's output for ``inputs`` (shaped as the recorded ones); :data:`STALE` when
        a tensor a constant was computed from has changed since, :data:`DECLINED` when the eager
        forward would take another kernel for these values (a non-finite input to Winograd)."""
        tensors = self.plan.run(list(inputs))
        if tensors is None:
            return DECLINED if self.plan.guards_hold() else STALE
        if self.single:
            return tensors[0]
        leaves = [tensors[value] if planned else value for planned, value in self.outputs]
        return tree_unflatten(leaves, self.structure)


def _storage(t: torch.Tensor) -> int:
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # opaque tensors (oneDNN's packed weights)
        return 0


class _Builder:
    """Classifies the recorded calls' arguments and appends the calls to an OpPlan."""

    def __init__(self, inputs: Sequence[torch.Tensor]) -> None:
        self.plan = load_extension().OpPlan(len(inputs))
        self.live = {id(t): (i, -1) for i, t in enumerate(inputs)}
        self.live_storages = {_storage(t) for t in inputs} - {0}
        self.folded: set[int] = set()  # ids of tensors computed from constants during the record
        self.guarded: set[int] = set()
        self.inputs = set(self.live_storages)
        # storages of new uninitialised buffers no recorded call has written yet
        self.unwritten: set[int] = set()

    def guard(self, t: torch.Tensor, where: str) -> None:
        """Makes the plan refuse to run once ``t`` changes (its values went into a constant)."""
        if id(t) in self.folded or id(t) in self.guarded:
            return
        if t.is_inference():
            raise PlanRefused(
                f"{where} computes a constant from an inference tensor (made under "
                "torch.inference_mode), whose updates no version counter tells"
            )
        self.plan.add_guard(t)
        self.guarded.add(id(t))

    def _constant(self, value: Any, where: str) -> tuple:
        for t in tree_leaves(value):
            if isinstance(t, torch.Tensor) and _storage(t) in self.live_storages:
                raise PlanRefused(
                    f"{where} reads the input's memory through a tensor made outside "
                    "the dispatcher (.data, NumPy)"
                )
        return ("c", value)

    def spec(self, value: Any, where: str) -> tuple:
        if isinstance(value, torch.Tensor) and id(value) in self.live:
            return ("s", *self.live[id(value)])
        if isinstance(value, (list, tuple)) and self.reads_live(value):
            return ("l", [self.spec(item, where) for item in value])
        return self._constant(value, where)

    def reads_live(self, value: Any) -> bool:
        return any(isinstance(t, torch.Tensor) and id(t) in self.live for t in tree_leaves(value))

    def add(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        schema = func._schema
        name = f"{schema.name}.{schema.overload_name}" if schema.overload_name else schema.name
        values = []
        for i, argument in enumerate(schema.arguments):
            if i < len(args) and not argument.kwarg_only:
                values.append(args[i])
            elif argument.name in kwargs:
                values.append(kwargs[argument.name])
            else:
                values.append(argument.default_value)
        written = [
            t
            for argument, value in zip(schema.arguments, values, strict=True)
            if argument.alias_info is not None and argument.alias_info.is_write
            for t in tree_leaves(value)
            if isinstance(t, torch.Tensor)
        ]
        reads = [t for t in tree_leaves(values) if isinstance(t, torch.Tensor)]
        if (
            reads
            and not self.reads_live(values)
            and torch.Tag.nondeterministic_seeded not in func.tags
        ):
            # computed from weights and constants alone: its outputs are constants of the plan.
            # Calls that read no tensor (factories: each call's new buffer) and random draws are
            # made again on each run.
            if any(id(t) not in self.folded for t in written):
                raise PlanRefused(f"{name} writes into a weight or buffer on each call")
            self._constant(values, name)
            for t in reads:
                self.guard(t, name)
            self.folded.update(id(t) for t in tree_leaves(out) if isinstance(t, torch.Tensor))
            return
        if torch.Tag.dynamic_output_shape in func.tags:
            raise PlanRefused(f"{name} has an output shape the input's values decide")
        if torch.Tag.data_dependent_output in func.tags:
            raise PlanRefused(f"{name} reads the input's values into Python")
        if any(id(t) not in self.live for t in written):
            raise PlanRefused(f"{name} writes into a weight, buffer or constant")
        if any(_storage(t) in self.inputs for t in written):
            raise PlanRefused(f"{name} writes into the forward's input")
        views = any(r.alias_info is not None and not r.alias_info.is_write for r in schema.returns)
        unread = [t for t in reads if all(t is not w for w in written)]
        if not views and any(_storage(t) in self.unwritten for t in unread):
            # a C++ composite filled it through its data pointer: values no replay would make
            raise PlanRefused(
                f"{name} reads a buffer filled outside the dispatcher (a layer "
                "packed its weight during the recorded call)"
            )
        self.unwritten.difference_update(_storage(t) for t in written)
        specs = [self.spec(value, name) for value in values]
        first = self.plan.add_step(schema.name, schema.overload_name, specs)
        if func in _NEW_BUFFERS:
            self.unwritten.add(_storage(out))
        returns = list(out) if len(schema.returns) > 1 else [out] if schema.returns else []
        for j, value in enumerate(returns):
            items = value if isinstance(value, (list, tuple)) else None
            if isinstance(value, torch.Tensor):
                self.live[id(value)] = (first + j, -1)
                self.live_storages.add(_storage(value))
            elif items is not None and all(isinstance(t, torch.Tensor) for t in items):
                for k, t in enumerate(items):
                    self.live[id(t)] = (first + j, k)
                    self.live_storages.add(_storage(t))
            elif value is not None:
                raise PlanRefused(
                    f"{name} returned a {type(value).__name__} computed from the "
                    "input, which Python may have branched on"
                )
        self.live_storages.discard(0)

    def finish(self, output: Any) -> OpPlanRun:
        leaves, structure = tree_flatten(output)
        outputs, refs = [], []
        for leaf in leaves:
            if isinstance(leaf, torch.Tensor) and id(leaf) in self.live:
                outputs.append((True, len(refs)))
                refs.append(self.live[id(leaf)])
            else:
                outputs.append((False, self._constant(leaf, "the output")[1]))
        self.plan.set_outputs(refs)
        single = isinstance(output, torch.Tensor) and outputs == [(True, 0)]
        return OpPlanRun(self.plan, outputs, structure, single=single)


def record_op_plan(forward: Callable[..., Any], inputs: Sequence[torch.Tensor]) -> tuple:
    """Runs ``forward(*inputs)`` once, recording its dispatcher calls, and returns
    ``(output, plan)``: ``plan(inputs)`` makes the same calls from C++ for new inputs of the same
    sizes, strides, dtypes and devices, and returns what ``forward`` would.

    The plan repeats the recorded calls only: whatever Python decided during the recording is
    fixed. It is the caller's part to use it only while the forward's Python would decide the
    same (what :class:`PlannedGraphModule` checks on each call).

    Raises:
        PlanRefused: a call the plan cannot repeat faithfully (named in the message): random
            numbers drawn for a constant, data-dependent shapes or values read into Python, a
            write into a weight, buffer, constant or the input, a tensor that aliases the input's
            memory without a dispatcher call, a buffer filled through its data pointer, or an
            argument OpPlan cannot hold.

    Example:
        >>> layer = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
        >>> x = torch.randn(1, 3, 8, 8)
        >>> with torch.no_grad():
        ...     y, plan = record_op_plan(layer, [x])
        ...     torch.equal(plan([x]), layer(x))
        True
    """
    recorder, called = _Recorder(), {}

    def note_call(module: nn.Module, _: tuple) -> None:
        called.setdefault(id(module), module)

    hook = nn.modules.module.register_module_forward_pre_hook(note_call)
    try:
        with recorder:
            output = forward(*inputs)
    finally:
        hook.remove()
    try:
        builder = _Builder(inputs)
        for func, args, kwargs, out in recorder.calls:
            builder.add(func, args, kwargs, out)
        run = builder.finish(output)
    except (ValueError, TypeError, RuntimeError) as error:  # an argument OpPlan cannot hold
        raise PlanRefused(f"cannot record the forward: {error}") from error
    run.called = list(called.values())
    return output, run


_GLOBAL_FORWARD_HOOKS = (
    nn.modules.module._global_forward_hooks,
    nn.modules.module._global_forward_pre_hooks,
)


def _plannable_call(args: tuple, kwargs: dict) -> bool:
    """Whether this call may use or record a plan: tensors only, no gradient, and nothing that
    watches or transforms the calls (compile, tracing, autocast, modes, global hooks). fx's
    symbolic tracing passes proxies, not tensors. Runs on every call, in a forward's cold caches:
    C functions only, cheapest first."""
    return (
        not kwargs
        and not torch.is_grad_enabled()
        and all(type(a) is torch.Tensor for a in args)
        and not torch.compiler.is_compiling()
        and not torch._C._is_tracing()
        and not torch._C._is_any_autocast_enabled()
        and not torch._C._len_torch_function_stack()
        and not torch._C._len_torch_dispatch_stack()
        and not any(_GLOBAL_FORWARD_HOOKS)
    )


#: Bumped whenever a module, parameter or buffer is assigned to a module anywhere: a plan then
#: checks once that its modules still hold the objects it recorded.
_assignments = [0]


def _count_assignment(*_: Any) -> None:
    _assignments[0] += 1


for _register in (
    nn.modules.module.register_module_module_registration_hook,
    nn.modules.module.register_module_parameter_registration_hook,
    nn.modules.module.register_module_buffer_registration_hook,
):
    _register(_count_assignment)


@dataclass
class _Entry:
    """One input signature's plan (None: refused, ``why`` says why) and what it holds for."""

    members: list[tuple[dict, str, Any]]  # every module's parameter/buffer/submodule slots
    forward: Any  # the generated forward the plan recorded
    layers: list[tuple[nn.Module, tuple]]  # packed layers checked in Python, with their state
    assignments: int  # _assignments when the members last held
    plan: OpPlanRun | None = None
    why: str = ""
    #: the ``__dict__`` of each module the recorded forward called, read on every call: the
    #: modules themselves would be more cache lines to touch between two forwards
    called: list[dict] = field(default_factory=list)

    @classmethod
    def of(cls, root: nn.Module, plan: OpPlanRun | None) -> _Entry:
        """The entry for ``plan``, recorded on ``root`` just now: packed layers whose weight's
        version counter tells its updates (``frozen_weights``) are guarded in C++, the others
        compared in Python on each call as their eager forward does (``_plan_state``)."""
        modules = list(root.modules())
        members = [
            (table, name, value)
            for module in modules
            for table in (module._parameters, module._buffers, module._modules)
            for name, value in table.items()
        ]
        layers = []
        for layer in modules:
            if not hasattr(layer, "_plan_state"):
                continue
            weight = layer._parameters["weight"]
            if plan is not None and layer._trusts_version(weight):  # not an inference tensor
                plan.plan.add_guard(weight)
            else:
                layers.append((layer, layer._plan_state()))
        called = list(map(vars, plan.called)) if plan is not None else []
        return cls(members, type(root).forward, layers, _assignments[0], plan, called=called)

    def holds(self, root: nn.Module) -> bool:
        """Whether the recorded Python would run the same way now (the C++ guards aside)."""
        if self.assignments != _assignments[0]:
            if not all(table.get(name) is value for table, name, value in self.members):
                return False
            self.assignments = _assignments[0]
        if type(root).forward is not self.forward:
            return False
        if _watched(self.called):
            return False
        return all(layer._plan_state() == state for layer, state in self.layers)


#: A module's ``__dict__`` entries that make a plan skip its Python: training mode, forward hooks.
_FLAGS = operator.itemgetter("training", "_forward_hooks", "_forward_pre_hooks")


def _watched(module_dicts: Iterable[dict]) -> bool:
    """Whether a module (given by its ``__dict__``) is in training mode or has forward hooks:
    Python a plan would skip. Between two forwards the caches are cold and each line of Python
    costs microseconds: the flags are read by C loops (map, any), not in Python."""
    return any(map(any, map(_FLAGS, module_dicts)))


@dataclass
class _Plans:
    lock: threading.Lock = field(default_factory=threading.Lock)
    entries: OrderedDict = field(default_factory=OrderedDict)
    seen: set = field(default_factory=set)
    runs: int = 0


_PLANS: weakref.WeakKeyDictionary[nn.Module, _Plans] = weakref.WeakKeyDictionary()


class PlannedGraphModule(fx.GraphModule):
    """A ``torch.fx.GraphModule`` whose inference forward runs as one C++ call once it has run
    twice on inputs of a signature (sizes, strides, dtypes, devices, ``requires_grad``).

    The first call of a signature runs eagerly (the layers pick and pack their kernels), the second
    records a plan (:func:`record_op_plan`), later ones run it while the plan holds: every layer in
    eval mode without hooks, the same parameter, buffer and submodule objects, each packed layer on
    the same weight values and thresholds (``_plan_state``), the same generated ``forward``. Calls
    with a gradient, autocast, tracing, ``torch.compile`` or a Python mode run eagerly and record
    nothing. Outputs are the eager forward's, bit for bit. In-place updates of weights are seen
    (the plan reads the weights themselves, and packed layers compare their snapshots as they do
    in eager); other attributes changed after the second call (a layer's stride, say) are not:
    call :meth:`reset_plans`. Copies (``copy.deepcopy``) start without plans; pickling keeps
    the graph but makes a plain GraphModule.

    :attr:`use_plans` = False (on the instance or the class) keeps the forward eager.

    Example:
        >>> layer = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
        >>> net = PlannedGraphModule(layer, fx.symbolic_trace(layer).graph)
        >>> x = torch.randn(1, 3, 8, 8)
        >>> with torch.no_grad():
        ...     outputs = [net(x) for _ in range(3)]  # eager, recorded, planned
        ...     torch.equal(outputs[2], layer(x))
        True
        >>> net.plan_report()
        [{'shapes': [(1, 3, 8, 8)], 'steps': 2, 'why': ''}]
    """

    #: Record and run plans (False: always the eager forward).
    use_plans: bool = True
    #: Input signatures a module keeps plans for (the most recently used ones).
    max_plans: int = 8

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not (self.use_plans and _plannable_call(args, kwargs)):
            return super().__call__(*args, **kwargs)
        plans = _PLANS.get(self)
        if plans is None:
            plans = _PLANS.setdefault(self, _Plans())
        key = (
            tuple((a.shape, a.stride(), a.dtype, a.device, a.requires_grad) for a in args),
            torch.is_inference_mode_enabled(),
            torch.backends.mkldnn.enabled,
        )
        entry = plans.entries.get(key)
        if entry is not None and entry.holds(self):
            if entry.plan is None:
                return super().__call__(*args)
            plans.entries.move_to_end(key)
            output = entry.plan(args)
            if output is DECLINED:
                return super().__call__(*args)
            if output is not STALE:
                plans.runs += 1
                return output
        if _watched(map(vars, self.modules())):
            return super().__call__(*args)
        with plans.lock:
            if key not in plans.seen or key in plans.entries:
                # The first call of a signature, and of a changed state, picks and packs kernels
                # (C++ fills the packed weights through their data pointers, unrecordable)
                plans.seen.add(key)
                plans.entries.pop(key, None)
                return super().__call__(*args)
            plan, why = None, ""
            try:
                output, plan = record_op_plan(super().__call__, args)
            except PlanRefused as refused:
                why = str(refused)
                output = super().__call__(*args)
            entry = _Entry.of(self, plan)  # after the recorded call: it may take first snapshots
            entry.why = why
            plans.entries[key] = entry
            while len(plans.entries) > max(1, self.max_plans):
                plans.entries.popitem(last=False)
            return output

    def reset_plans(self) -> None:
        """Drops the recorded plans: the next two calls of each signature run eagerly again."""
        _PLANS.pop(self, None)

    def plan_report(self) -> list[dict[str, Any]]:
        """One dict per input signature seen since the plans were reset: ``shapes``, ``steps``
        (operator calls in its plan; 0 when there is none) and ``why`` (why not, or '')."""
        plans = _PLANS.get(self)
        if plans is None:
            return []
        return [
            {
                "shapes": [tuple(shape) for shape, *_ in key[0]],
                "steps": entry.plan.steps if entry.plan else 0,
                "why": entry.why,
            }
            for key, entry in plans.entries.items()
        ]
