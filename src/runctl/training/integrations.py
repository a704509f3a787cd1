"""Callbacks that connect Hugging Face ``Trainer`` and PyTorch Lightning to runctl.

Importing this module needs neither library: each callback class is built on first use.

Hugging Face::

    from runctl.training import checkpoint_dir
    from runctl.training.integrations import HuggingFaceCallback

    args = TrainingArguments(output_dir=str(checkpoint_dir()), ...)
    trainer = Trainer(model, args, callbacks=[HuggingFaceCallback()], ...)

Lightning (``lightning.pytorch`` or ``pytorch_lightning``, whichever the script uses)::

    from runctl.training.integrations import LightningCallback

    trainer = L.Trainer(callbacks=[LightningCallback()], ...)

Both report loss, epoch (1-based, with ``total_epochs``) and step to runctl, and stop training
gracefully, with a checkpoint, when runctl asks for a stop. In a distributed run the stop decision is
shared by all ranks, so that no rank waits forever for another that has already stopped.
"""

import math
import sys
from typing import Any, Dict, Optional

from . import atomic_path, checkpoint_dir, report, should_stop

# HuggingFaceCallback and LightningCallback are resolved on access (module __getattr__), so they are
# not in __all__: a star import must not require either framework.
__all__ = ["huggingface_callback", "lightning_callback"]

_classes: Dict[str, Any] = {}


def huggingface_callback(**kwargs: Any) -> Any:
    """A new :class:`HuggingFaceCallback` (a ``transformers.TrainerCallback``)."""
    return _huggingface_class()(**kwargs)


def lightning_callback(**kwargs: Any) -> Any:
    """A new :class:`LightningCallback` (a Lightning ``Callback``)."""
    return _lightning_class()(**kwargs)


def __getattr__(name: str) -> Any:
    if name == "HuggingFaceCallback":
        return _huggingface_class()
    if name == "LightningCallback":
        return _lightning_class()
    raise AttributeError("module {!r} has no attribute {!r}".format(__name__, name))


# --------------------------------------------------------------------------------------------------
# Shared pieces


def _scalar(value: Any) -> Any:
    """A plain number from a tensor or number with one element; None for anything else."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    numel = getattr(value, "numel", None)
    if callable(numel):
        try:
            if numel() != 1:
                return None
            return value.detach().cpu().item() if hasattr(value, "detach") else value.item()
        except Exception:
            return None
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return item()
        except Exception:
            return None
    return None


def _current_epoch(progress: Optional[float], total: Optional[int]) -> Optional[int]:
    """1-based number of the epoch in progress from a fractional epoch count (0.5 -> 1, 1.0 -> 1)."""
    if progress is None:
        return None
    epoch = max(1, math.ceil(progress - 1e-9))
    if total:
        epoch = min(epoch, total)
    return epoch


def _any_rank(flag: bool) -> bool:
    """True on every rank when it is True on any rank of the default torch.distributed group."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return flag
    import torch

    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    tensor = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


# --------------------------------------------------------------------------------------------------
# Hugging Face

_HF_SKIPPED = {"epoch", "loss", "step", "total_flos"}


def _hf_payload(args: Any, state: Any, logs: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """Arguments for :func:`report` from the Trainer's state and one ``on_log`` dict."""
    logs = logs or {}
    total = getattr(state, "num_train_epochs", None) or getattr(args, "num_train_epochs", None)
    total_epochs = math.ceil(total) if total else None
    progress = logs.get("epoch", getattr(state, "epoch", None))
    payload: Dict[str, Any] = {
        "step": getattr(state, "global_step", None),
        "epoch": _current_epoch(progress, total_epochs),
        "loss": logs.get("loss"),
        "total_epochs": total_epochs,
    }
    if progress is not None:
        payload["epoch_progress"] = progress
    max_steps = getattr(state, "max_steps", None)
    if max_steps and max_steps > 0:
        payload["total_steps"] = max_steps
    for key, value in logs.items():
        if key not in _HF_SKIPPED and key not in payload:
            number = _scalar(value)
            if number is not None:
                payload[key] = number
    return payload


def _huggingface_class() -> Any:
    cls = _classes.get("hf")
    if cls is not None:
        return cls
    try:
        from transformers import TrainerCallback
    except ImportError as exc:
        raise ImportError("HuggingFaceCallback needs the transformers package: pip install transformers") from exc

    class HuggingFaceCallback(TrainerCallback):
        """Reports every ``on_log`` to runctl; saves and stops when runctl asks for a stop."""

        def __init__(self, sync_ranks: bool = True) -> None:
            self.sync_ranks = sync_ranks
            self.stop_requested = False

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> Any:
            if getattr(state, "is_world_process_zero", True):
                report(**_hf_payload(args, state, logs))
            return control

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if not self.stop_requested:
                stop = should_stop()
                self.stop_requested = _any_rank(stop) if self.sync_ranks else stop
                if self.stop_requested and getattr(state, "is_world_process_zero", True):
                    print(
                        "runctl: stop requested at step {}: saving a checkpoint and stopping".format(
                            getattr(state, "global_step", "?")
                        ),
                        flush=True,
                    )
            if self.stop_requested:
                control.should_save = True
                control.should_training_stop = True
            return control

    HuggingFaceCallback.__module__ = __name__
    _classes["hf"] = HuggingFaceCallback
    return HuggingFaceCallback


# --------------------------------------------------------------------------------------------------
# Lightning


def _lightning_payload(trainer: Any, outputs: Any) -> Dict[str, Any]:
    """Arguments for :func:`report` after one training batch."""
    max_epochs = getattr(trainer, "max_epochs", None)
    total_epochs = max_epochs if isinstance(max_epochs, int) and max_epochs > 0 else None
    current = getattr(trainer, "current_epoch", None)
    loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
    payload: Dict[str, Any] = {
        "step": getattr(trainer, "global_step", None),
        "epoch": current + 1 if isinstance(current, int) else None,
        "loss": _scalar(loss) if loss is not None else None,
        "total_epochs": total_epochs,
    }
    max_steps = getattr(trainer, "max_steps", None)
    if isinstance(max_steps, int) and max_steps > 0:
        payload["total_steps"] = max_steps
    metrics = dict(getattr(trainer, "callback_metrics", None) or {})
    if payload["loss"] is None:
        payload["loss"] = _scalar(metrics.get("train_loss", metrics.get("loss")))
    for key, value in metrics.items():
        name = str(key)
        if name not in ("step", "epoch") and name not in payload:
            number = _scalar(value)
            if number is not None:
                payload[name] = number
    return payload


def _lightning_base() -> Any:
    # A Trainer accepts only callbacks of its own package: prefer the one the script already uses.
    if "lightning.pytorch" in sys.modules or "pytorch_lightning" not in sys.modules:
        try:
            from lightning.pytorch import Callback

            return Callback
        except ImportError:
            pass
    try:
        from pytorch_lightning import Callback as LegacyCallback
    except ImportError as exc:
        raise ImportError("LightningCallback needs lightning (pip install lightning) or pytorch_lightning") from exc
    return LegacyCallback


def _lightning_class() -> Any:
    cls = _classes.get("lightning")
    if cls is not None:
        return cls
    base = _lightning_base()

    class LightningCallback(base):  # type: ignore[misc, valid-type]
        """Reports metrics after each training batch; saves and stops when runctl asks for a stop.

        ``every_n_steps`` thins the reports; ``save_on_stop`` writes
        ``checkpoint_step_<N>.ckpt`` in :func:`runctl.training.checkpoint_dir` when stopping.
        """

        def __init__(self, every_n_steps: int = 1, save_on_stop: bool = True) -> None:
            super().__init__()
            self.every_n_steps = max(1, int(every_n_steps))
            self.save_on_stop = save_on_stop
            self.stop_requested = False

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if trainer.is_global_zero and trainer.global_step % self.every_n_steps == 0:
                report(**_lightning_payload(trainer, outputs))
            if self.stop_requested:
                return
            stop = should_stop()
            try:
                stop = bool(trainer.strategy.reduce_boolean_decision(stop, all=False))
            except TypeError:  # releases whose reduce_boolean_decision has no ``all``
                stop = _any_rank(stop)
            if stop:
                self.stop_requested = True
                trainer.should_stop = True
                if trainer.is_global_zero:
                    print(
                        "runctl: stop requested at step {}: stopping".format(trainer.global_step),
                        flush=True,
                    )

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            if not (self.stop_requested and self.save_on_stop):
                return
            path = checkpoint_dir() / "checkpoint_step_{}.ckpt".format(trainer.global_step)
            if getattr(trainer, "world_size", 1) == 1:
                with atomic_path(path) as tmp:
                    trainer.save_checkpoint(str(tmp))
            else:
                # Collective in distributed strategies: every rank calls it, the strategy writes.
                trainer.save_checkpoint(str(path))
            if trainer.is_global_zero:
                print("runctl: saved checkpoint {}".format(path), flush=True)

    LightningCallback.__module__ = __name__
    _classes["lightning"] = LightningCallback
    return LightningCallback
