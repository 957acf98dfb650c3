"""Small functions the pipeline integration tests register (allowed through V1FABRIK_ALLOWED_MODULES).

``quick_trainer`` follows the trainer contract (``cb(epoch=, model=, state=)`` every epoch,
``resume_state`` to continue) in a few lines, so the database tests do not depend on the cost
of a full ``standard_trainer`` run. ``crash_after_epoch`` simulates a worker killed mid-training.
"""
import logging
import os

import torch

from pipeline.registry import register
from pipeline.utility.scores import get_correlations

logger = logging.getLogger(__name__)

# Appended to by every training call, so a test can count how often each key was trained.
TRAINING_LOG_ENV = "V1FABRIK_TEST_TRAINING_LOG"


class SimulatedCrash(RuntimeError):
    """Raised by quick_trainer to simulate a worker dying after a checkpoint."""


@register("trainer")
def quick_trainer(model, dataloaders, seed, uid=None, cb=None, epochs=2, lr=0.01, device="cpu",
                  resume_state=None, crash_after_epoch=None):
    """Poisson-loss Adam for ``epochs`` epochs; returns (validation correlation, history, state_dict)."""
    torch.manual_seed(seed)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history, start = [], 0
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        torch.set_rng_state(resume_state["rng"])
        history, start = list(resume_state["history"]), int(resume_state["epoch"])
    for epoch in range(start + 1, epochs + 1):
        model.train()
        total = 0.0
        for data_key, loader in dataloaders["train"].items():
            for batch in loader:
                fields = {k: v.to(device) for k, v in batch._asdict().items()}
                output = model(fields.pop("images"), data_key=data_key, **fields)
                loss = (output - fields["responses"] * torch.log(output + 1e-12)).sum()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item()
        history.append(total)
        if cb is not None:
            cb(epoch=epoch, model=model, state={
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "rng": torch.get_rng_state(), "history": history, "epoch": epoch,
            })
        if crash_after_epoch == epoch:
            raise SimulatedCrash(f"simulated crash after epoch {epoch}")
    if os.environ.get(TRAINING_LOG_ENV):
        with open(os.environ[TRAINING_LOG_ENV], "a") as log:
            log.write(f"{uid['model_hash']}-{seed} {os.getpid()}\n")
    model.eval()
    score = get_correlations(model, dataloaders, tier="validation", device=device, per_neuron=False)
    return score, {"loss": history, "epochs": epochs}, model.state_dict()
