"""Early stopping with rollbacks, as a small state machine that can be saved and resumed.

It reproduces neuralpredictors 0.3.0 ``training.early_stopping.early_stopping`` (the generator that
sensorium's trainer iterates): up to ``lr_decay_steps`` rounds of "train until ``patience``
evaluations without an improvement of more than ``tolerance``, then roll back to the best state",
at most ``max_iter`` epochs, stop when the objective is not finite. The learning rate is left to
the plateau scheduler, exactly as upstream. Unlike the generator, the bookkeeping is plain data
(``state_dict``), so a preempted run resumes mid-schedule.
"""
import dataclasses
import enum
import math


class Action(enum.Enum):
    """What the trainer does after an epoch."""

    CONTINUE = "continue"
    ROLLBACK = "rollback"  # restore the best state, then continue
    STOP = "stop"  # restore the best state (if restore_best) and finish


@dataclasses.dataclass
class EarlyStopping:
    """Schedule of epochs, evaluations and rollbacks.

    Usage: ``begin(objective)`` with the untrained model's score; then, while ``running``, train
    one epoch and call ``epoch_done()``; when it says an evaluation is due, call ``update(score)``
    and act on the returned ``(improved, action)``.
    """

    patience: int = 5
    max_iter: int = 200
    tolerance: float = 1e-6
    lr_decay_steps: int = 3
    interval: int = 1
    maximize: bool = True
    epoch: int = 0
    round: int = 0
    patience_counter: int = 0
    epochs_since_evaluation: int = 0
    best: float = math.nan
    current: float = math.nan
    running: bool = False

    def __post_init__(self):
        for name in ("patience", "max_iter", "lr_decay_steps", "interval"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"early stopping {name} must be a positive integer, got {value!r}")

    def begin(self, objective):
        """Start the schedule from the untrained model's objective."""
        self.best = self.current = float(objective)
        self.running = self._can_train()

    def epoch_done(self):
        """Count a finished epoch; returns whether the objective must be evaluated now."""
        self.epoch += 1
        self.epochs_since_evaluation += 1
        return self.epochs_since_evaluation == self.interval

    def update(self, objective):
        """Record an evaluation; returns ``(improved, action)``."""
        self.epochs_since_evaluation = 0
        self.current = float(objective)
        sign = 1 if self.maximize else -1
        improved = sign * self.current > sign * self.best + self.tolerance
        if improved:
            self.best = self.current
            self.patience_counter = 0
        else:
            self.patience_counter += 1
        if self._can_train():
            return improved, Action.CONTINUE
        if self.patience_counter < self.patience:  # max_iter reached, or the objective is not finite
            self.running = False
            return improved, Action.STOP
        # patience ran out: this round is over
        self.round += 1
        self.patience_counter = 0
        self.running = self._can_train()
        return improved, Action.ROLLBACK if self.running else Action.STOP

    def _can_train(self):
        return (
            math.isfinite(self.current)
            and self.round < self.lr_decay_steps
            and self.patience_counter < self.patience
            and self.epoch < self.max_iter
        )

    def state_dict(self):
        return dataclasses.asdict(self)

    def load_state_dict(self, state):
        for field in dataclasses.fields(self):
            setattr(self, field.name, state[field.name])
