"""training_loss.png: train and eval loss over the steps of a run, from the Trainer's log; a
preference run (DPO) adds a panel of its reward margins and accuracies, train and eval."""
from __future__ import annotations

PLOT_FILE = "training_loss.png"
LOSS = {"train": "loss", "eval": "eval_loss"}  # curve -> the log key it is read from
PREFERENCE = {"train margin": "rewards/margins", "eval margin": "eval_rewards/margins",
              "train accuracy": "rewards/accuracies", "eval accuracy": "eval_rewards/accuracies"}


def curves_of(log_history: list[dict], keys: dict[str, str]) -> dict[str, tuple[list[int], list[float]]]:
    """{curve: (steps, values)} of each `keys` curve, from trainer.state.log_history."""
    curves = {name: ([], []) for name in keys}
    for entry in log_history:
        for name, key in keys.items():
            if key in entry and "step" in entry:
                curves[name][0].append(entry["step"])
                curves[name][1].append(entry[key])
    return curves


def loss_curves(log_history: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """{"train": (steps, losses), "eval": (steps, losses)}."""
    return curves_of(log_history, LOSS)


def plot_loss(log_history: list[dict], path: str) -> bool:
    """Writes the plot to `path`; False (nothing written) when no loss was logged."""
    losses, preference = loss_curves(log_history), curves_of(log_history, PREFERENCE)
    if not any(steps for steps, _ in losses.values()):
        return False
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on training nodes
    import matplotlib.pyplot as plt

    panels = 2 if any(steps for steps, _ in preference.values()) else 1
    figure, axes = plt.subplots(panels, 1, figsize=(8, 5 * panels), dpi=100, squeeze=False)
    draw(axes[0][0], losses, "loss")
    if panels == 2:
        margins = axes[1][0]
        draw(margins, {name: curve for name, curve in preference.items() if "margin" in name}, "reward margin")
        draw(margins.twinx(), {name: curve for name, curve in preference.items() if "accuracy" in name},
             "reward accuracy (chosen above rejected)", dashed=True)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return True


def draw(axes, curves: dict, label: str, dashed: bool = False):
    for name, (steps, values) in curves.items():
        if steps:
            style = ("o" if name.startswith("eval") else "") + ("--" if dashed else "-")
            axes.plot(steps, values, style, label=name)
    axes.set_xlabel("step")
    axes.set_ylabel(label)
    axes.grid(alpha=0.3)
    axes.legend(loc="upper right" if dashed else "upper left")
