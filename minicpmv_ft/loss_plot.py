"""training_loss.png: train and eval loss over the steps of a run, from the Trainer's log."""
from __future__ import annotations

PLOT_FILE = "training_loss.png"


def loss_curves(log_history: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """{"train": (steps, losses), "eval": (steps, losses)}, from trainer.state.log_history."""
    curves = {"train": ([], []), "eval": ([], [])}
    for entry in log_history:
        for name, key in (("train", "loss"), ("eval", "eval_loss")):
            if key in entry and "step" in entry:
                curves[name][0].append(entry["step"])
                curves[name][1].append(entry[key])
    return curves


def plot_loss(log_history: list[dict], path: str) -> bool:
    """Writes the plot to `path`; False (nothing written) when no loss was logged."""
    curves = loss_curves(log_history)
    if not curves["train"][0] and not curves["eval"][0]:
        return False
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on training nodes
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5), dpi=100)
    for name, style in (("train", "-"), ("eval", "o-")):
        steps, losses = curves[name]
        if steps:
            axes.plot(steps, losses, style, label=f"{name} loss")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return True
