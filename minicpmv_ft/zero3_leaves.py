"""ZeRO-3 "leaf" modules: weights gathered whole once per call of the module, not once per call
of each child. For a module that runs its children a data-dependent number of times (the native
versions' merger: its MLPs once per view), per-child gathers would differ in number between processes
holding different view counts, and the collectives would deadlock.

Its output must be one tensor: DeepSpeed gathers a module's weights for backward once per output
tensor, so a list of one tensor per view would make processes with different view counts gather
(and record in ZeRO-3's module trace) different numbers of times, and torch fires the full
backward hook, from which DeepSpeed reduces a leaf module's gradients, only for tensors or
tuples, not lists. The hook must fire after the weights' gradients exist, which holds when an
input requires grad (otherwise it fires on the output gradients, before them, and the
gradients are never reduced)."""
import torch

from .versions import submodule


def mark_zero3_leaves(model, version):
    """Marks the version's `zero3_leaf_modules` in `model` (after any PEFT wrapping: the modules
    that forward really calls); call before DeepSpeed puts its hooks on the model."""
    from deepspeed.utils import set_z3_leaf_module

    for path in version.zero3_leaf_modules:
        module = submodule(model, path)
        set_z3_leaf_module(module, True)
        module.register_forward_pre_hook(_floating_inputs_require_grad)
        module.register_forward_hook(_views_as_one_tensor)


def _floating_inputs_require_grad(module, args):
    if not torch.is_grad_enabled():
        return None
    return tuple(arg.detach().requires_grad_() if torch.is_tensor(arg) and arg.is_floating_point()
                 and not arg.requires_grad else arg for arg in args)


def _views_as_one_tensor(module, args, output):
    """One tensor per view -> a 1-tuple of them concatenated (the model concatenates them anyway)."""
    if isinstance(output, (list, tuple)):
        return (torch.cat(output),)
    return None
