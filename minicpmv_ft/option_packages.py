"""Options that need a package this environment may lack (--report_to wandb, --optim
adamw_bnb_8bit): refused as the arguments parse, in one line, rather than by the Trainer after
the weights loaded."""
from __future__ import annotations


def check_reporters(report_to) -> None:
    """Each --report_to name must be one the Trainer knows and whose package is installed."""
    # imported here: check_data.py imports the arguments but builds no TrainingArguments
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK, get_available_reporting_integrations

    available = get_available_reporting_integrations()
    for name in report_to or []:
        if name in ("none", "all"):
            continue
        if name not in INTEGRATION_TO_CALLBACK:
            raise ValueError(f"--report_to {name}: not a logger the Trainer knows (one of none, "
                             f"{', '.join(sorted(INTEGRATION_TO_CALLBACK))})")
        if name not in available:
            raise ValueError(f"--report_to {name}: its package is not installed in this environment (pip install "
                             f"{name.replace('_', '-')}); installed: {', '.join(available) or 'none'}")


def check_optimizer(train_args) -> None:
    """--optim's package is installed (the Trainer imports it when it builds the optimizer). An
    optimizer that needs the model to be set up (GaLore's target modules) is checked then."""
    from transformers import Trainer

    try:
        Trainer.get_optimizer_cls_and_kwargs(train_args)
    except ImportError as error:
        raise ValueError(f"--optim {optimizer_name(train_args)}: {error}") from None
    except ValueError as error:  # transformers 4.57 reports a missing bitsandbytes so
        if "not installed" in str(error):
            raise ValueError(f"--optim {optimizer_name(train_args)}: {error} (pip install bitsandbytes)") from None


def optimizer_name(train_args) -> str:
    return getattr(train_args.optim, "value", train_args.optim)
