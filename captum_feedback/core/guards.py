"""What a feedback session checks and restores around the user's model: refusals that name
the problem (training mode, ``DataParallel``, a score that does not depend on the inputs), and
the model's training flags, ``requires_grad`` and ``.grad`` put back on every exit path."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, List, Sequence, Tuple

from torch import Tensor, nn


def check_depends_on_inputs(scores: Tensor) -> None:
    """Raises ``ValueError`` for target scores that no backward pass can reach the inputs from."""
    if not scores.requires_grad:
        raise ValueError("The target score does not depend on the inputs; nothing to attribute.")


Named = Sequence[Tuple[str, nn.Module]]
"""A model's modules with their names, ``list(model.named_modules())`` (none for a function)."""


def named_modules(model: Any) -> List[Tuple[str, nn.Module]]:
    """The model's modules with their names, walked once for every check and guard of a session."""
    return list(model.named_modules()) if isinstance(model, nn.Module) else []


def _state_snapshot(modules: Named) -> List[Tuple[Any, Any, Any]]:
    """``(object, attribute, value)`` for every module's training flag and every parameter's
    ``requires_grad`` and ``.grad``. Parameters are read from each module's own table, not
    ``model.parameters()``, whose de-duplication took as long as the rest (a shared parameter is
    listed twice and restored twice, harmlessly)."""
    params = [p for _, m in modules for p in m._parameters.values() if p is not None]
    return ([(m, "training", m.training) for _, m in modules] + [(p, "requires_grad", p.requires_grad) for p in params]
            + [(p, "grad", p.grad) for p in params])


def check_model(modules: Named) -> None:
    """Refuses what the gating cannot run on, among the model's ``modules`` (:func:`named_modules`).

    Raises:
        ValueError: ``nn.DataParallel`` anywhere in the model: its replicas run in other
            threads, where the gating (a thread-local ``TorchFunctionMode``, or forwards replayed
            for the caller's thread alone) does not reach, so they would compute plain gradients
            (``DistributedDataParallel`` runs in the caller's thread and works). A module in
            training mode that would change the model or make the passes differ: batch
            normalization (batch statistics, running statistics updated on every pass), instance
            normalization that tracks running statistics, and dropout.
    """
    for name, module in modules:
        if isinstance(module, nn.DataParallel):
            raise ValueError(
                f"'{name or 'model'}' is a torch.nn.DataParallel: its replicas run in other threads, which the "
                "feedback gates do not reach. Pass its .module (and move inputs to that device), or run one "
                "process per GPU with DistributedDataParallel (torchrun)."
            )
        effect = _training_effect(module)
        if effect:
            raise ValueError(
                f"The model is in training mode: {type(module).__name__} '{name or 'model'}' would {effect} on "
                "every one of feedback's passes, and its buffers would change. Call model.eval() first."
            )


def _training_effect(module: nn.Module) -> str:
    """What the module would do to feedback's passes in training mode ("" for nothing)."""
    if not module.training:
        return ""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) or (
            isinstance(module, nn.modules.instancenorm._InstanceNorm) and module.track_running_stats):
        return "normalize with batch statistics and update its running statistics"
    if isinstance(module, (nn.modules.dropout._DropoutNd, nn.AlphaDropout)) and module.p > 0:
        return "drop other units"
    return ""


@contextlib.contextmanager
def preserved_state(modules: Named) -> Iterator[None]:
    """Restores training flags, ``requires_grad`` and ``.grad`` of the ``modules`` and their
    parameters (:func:`named_modules`)."""
    snapshot = _state_snapshot(modules)
    try:
        yield
    finally:
        for obj, attr, value in snapshot:
            if getattr(obj, attr) is not value:
                setattr(obj, attr, value)
