"""The weighting interface: how per-task losses (and gradients) become one update.

A method sees only the tasks present in a batch (those with at least one labelled sample):
``losses`` [K] and, for gradient methods, ``grads`` [K, D] of those K tasks, with ``tasks``
[K] their indices among all T tasks so that stateful methods keep per-task state. An absent
task gets no gradient and weight 0.

Two families share the interface:

* **loss methods** (``needs_grads = False``) turn losses into weights; training backpropagates
  ``sum(w * loss)`` once, as cheap as plain training.
* **gradient methods** (``needs_grads = True``) combine the per-task gradients of the shared
  parameters, or of the shared representation (cheaper; ``representation_ok``), into one
  gradient ``combined`` [D].

Every method also answers :meth:`Weighting.combine`, so ``mhc.weighting.combine(name, grads)``
works for loss methods too (``combined = weights @ grads``).
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import torch
from torch import Tensor, nn

from mhc.errors import ConfigError

_REGISTRY: dict[str, type["Weighting"]] = {}


def register(name: str) -> Callable[[type["Weighting"]], type["Weighting"]]:
    """Class decorator: make a method selectable as ``weighting=<name>``."""

    def decorator(cls: type["Weighting"]) -> type["Weighting"]:
        if name in _REGISTRY:
            raise ValueError(f"weighting method {name!r} is registered twice")
        _REGISTRY[name] = cls
        cls.name = name
        return cls

    return decorator


def available() -> list[str]:
    """The registered method names, sorted."""
    return sorted(_REGISTRY)


# What the methods' numeric options mean alike: (lowest value, whether it is allowed, highest or None).
OPTION_BOUNDS: dict[str, tuple[float, bool, float | None]] = {
    "lr": (0, False, None), "w_lr": (0, False, None), "robust_step_size": (0, False, None), "eps": (0, True, None),
    "temperature": (0, False, None), "concentration": (0, False, None), "mu": (0, False, None),
    "max_norm": (0, True, None), "alpha": (0, True, None), "gamma": (0, True, None), "rho": (0, True, None),
    "lmbda": (0, True, None), "beta_sigma": (0, True, None), "gamma_sigma": (0, True, None),
    "c": (0, True, None), "beta": (0, True, 1), "leak": (0, True, 1),
    "update_weights_every": (1, True, None), "niter": (1, True, None),
}


def check_options(name: str, options: dict[str, Any]) -> None:
    """Each numeric option of :data:`OPTION_BOUNDS` within its bounds; else one error naming it."""
    for option, (low, inclusive, high) in OPTION_BOUNDS.items():
        value = options.get(option)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if (value < low or (value == low and not inclusive)) or (high is not None and value > high):
            bounds = f"{'>=' if inclusive else '>'} {low:g}" + (f" and <= {high:g}" if high is not None else "")
            raise ConfigError(f"weighting={name}: {option} must be {bounds}, got {value!r}")


def create(name: str, num_tasks: int, **options: Any) -> "Weighting":
    """A method by name, for ``num_tasks`` tasks; unknown names and options, and option values out
    of bounds, are clear errors."""
    if name not in _REGISTRY:
        raise ConfigError(f"weighting: unknown method {name!r}; choose one of {', '.join(available())}")
    check_options(name, options)
    try:
        return _REGISTRY[name](num_tasks, **options)
    except TypeError as err:
        raise ConfigError(f"weighting={name}: {err}") from None


def all_tasks(num_tasks: int, device: torch.device | None = None) -> Tensor:
    return torch.arange(num_tasks, device=device)


class Weighting(nn.Module):
    """Base class of the weighting methods.

    Subclasses set ``needs_grads`` (gradient method), ``representation_ok`` (may run on the
    gradient of the shared representation), ``needs_losses`` (uses loss values), and implement
    :meth:`weights` (loss methods) or :meth:`combine` (gradient methods). State that must
    survive a resume lives in buffers or parameters, so it is part of the checkpoint.
    """

    name: ClassVar[str] = "?"
    needs_grads: ClassVar[bool] = False
    representation_ok: ClassVar[bool] = True
    needs_losses: ClassVar[bool] = False

    def __init__(self, num_tasks: int) -> None:
        super().__init__()
        if num_tasks < 1:
            raise ValueError("num_tasks must be at least 1")
        self.num_tasks = num_tasks

    # -- loss methods -----------------------------------------------------------------------
    def weights(self, losses: Tensor, tasks: Tensor) -> Tensor:
        """Weights [K] for the present tasks' losses [K] (detached); loss methods implement this."""
        raise NotImplementedError(f"{self.name} combines gradients; it has no loss-only weights")

    def loss(self, losses: Tensor, tasks: Tensor) -> tuple[Tensor, Tensor]:
        """The scalar to backpropagate for a loss method, and the weights [K] it used."""
        w = self.weights(losses.detach(), tasks)
        return (w * losses).sum(), w

    # -- gradient methods -------------------------------------------------------------------
    def combine(self, grads: Tensor, losses: Tensor, tasks: Tensor) -> tuple[Tensor, Tensor]:
        """The combined gradient [D] of the present tasks' gradients [K, D], and weights [K]
        with ``combined == weights @ grads`` where the method is a linear combination."""
        w = self.weights(losses.detach(), tasks)
        return w @ grads, w

    # -- schedule hooks ---------------------------------------------------------------------
    def on_epoch_end(self) -> None:
        """Called once at the end of every training epoch (DWA's loss history, ...)."""

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        # Buffers sized on first use (e.g. [T, D] gradient estimates) take the saved shape.
        for name, buffer in self._buffers.items():
            saved = state_dict.get(prefix + name)
            if buffer is not None and saved is not None and saved.shape != buffer.shape:
                self._buffers[name] = torch.empty_like(saved, device=buffer.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def combine(name: str, grads: Tensor, losses: Tensor | None = None, **options: Any) -> tuple[Tensor, Tensor]:
    """Combine task gradients with a method, without a trainer.

    Args:
        name: a method of :func:`available`, e.g. ``"pcgrad"``.
        grads: [T, D], one flattened gradient per task.
        losses: [T] loss values, for the methods that use them (``gls``, ``dwa``, ``db_mtl``, ...).
        options: the method's hyperparameters (see ``conf/weighting/<name>.yaml``).

    Returns:
        ``(combined, weights)``: the update direction [D] and the task weights [T].

    Example:
        >>> g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
        >>> combined, weights = combine("pcgrad", g)
    """
    if grads.ndim != 2:
        raise ValueError(f"grads must be [tasks, dim], got shape {tuple(grads.shape)}")
    method = create(name, grads.shape[0], **options)
    if losses is None:
        if method.needs_losses:
            raise ValueError(f"combine({name!r}) needs the task losses: combine({name!r}, grads, losses)")
        losses = grads.new_ones(grads.shape[0])
    with torch.no_grad():
        return method.combine(grads, losses, all_tasks(grads.shape[0], grads.device))
