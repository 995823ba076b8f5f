"""``modfsm run``: train and compress the built-in digits MLP with a recipe.

The run trains :class:`~modfsm.engine.app.digits.DigitsMLP` on scikit-learn's digits with
Adam, one optimizer step per batch, through a :class:`~modfsm.engine.loop.session.Session`
that wraps the optimizer. Recipe windows are in optimizer steps. The test
accuracy is measured at step 0, whenever a modifier's window opens or closes,
after the last step (fake quantization still on) and after ``finalize``.

Everything is determined by the seed: the model's initial weights and the
order of the batches (epoch ``e`` is a permutation drawn from ``seed`` and
``e``), so a run resumed from a checkpoint continues exactly as the
uninterrupted run would have, and the summary ends with a digest of the final
weights to show it.

Checkpoints (``--checkpoint DIR``) hold the session, model, optimizer and the
accuracies measured so far; they are sealed with a digest and written
atomically (:mod:`modfsm.engine.app.checkpoint`). :func:`load_checkpoint`
checks everything in one against the run before a resume; :meth:`RunConfig.check`
checks every option and output path before any work.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Final

import attrs
import torch

from modfsm.engine.app import checkpoint, digits, limits, paths
from modfsm.engine.config.recipe import Recipe
from modfsm.engine.kernel.errors import ConfigError, LifecycleError
from modfsm.engine.loop.session import Session
from modfsm.engine.runtime.modifier import Modifier

__all__ = [
    "CHECKPOINT_FORMAT",
    "Batches",
    "Evaluation",
    "LayerSparsity",
    "ModifierRow",
    "QuantizationRow",
    "RunConfig",
    "RunResult",
    "default_recipe_text",
    "format_summary",
    "run",
]

CHECKPOINT_FORMAT: Final = checkpoint.FORMAT
CHECKPOINT_NAME: Final = checkpoint.NAME
_CALIBRATION_BATCHES: Final = 8
_OWNER: Final = "modfsm run"
_DEVICE_KINDS: Final = ("cpu", "cuda")


def default_recipe_text() -> str:
    """The recipe ``modfsm run`` uses when none is given."""
    recipe = resources.files("modfsm.engine.app").joinpath("data/default_recipe.yaml")
    return recipe.read_text("utf-8")


def _fail(field: str, value: Any, message: str) -> ConfigError:
    return ConfigError(f"{_OWNER}: {message}", owner=_OWNER, field=field, value=value)


def _check_device_kind(name: str) -> None:
    """Refuse a device that is not a CPU or CUDA device, before torch is asked."""
    kind = name.split(":", 1)[0]
    if kind not in _DEVICE_KINDS:
        raise _fail(
            "device",
            name,
            f"--device {name!r}: modfsm run trains on cpu or cuda (cuda:N), not {kind!r}. To "
            "fix, use --device cpu or --device cuda.",
        )


@attrs.frozen
class RunConfig:
    """The settings of one run (the command line's options).

    Attributes:
        recipe: a recipe file; None runs the default recipe.
        steps: optimizer steps to train.
        seed: the seed of the initial weights and the batch order.
        batch_size: images per batch.
        lr: Adam's learning rate.
        device: where to train (``cpu``, ``cuda``, ``cuda:1``, ...).
        trace: a JSONL file for the session's trace.
        checkpoint: a folder for checkpoints.
        checkpoint_every: steps between checkpoints.
        resume: continue from ``checkpoint``'s latest checkpoint.
        stop_at: stop after this many steps (without finalizing), leaving a checkpoint.
        overwrite: start again over the checkpoint and trace another run left.
    """

    recipe: Path | None = None
    steps: int = 600
    seed: int = 0
    batch_size: int = 32
    lr: float = 1e-3
    device: str = "cpu"
    trace: Path | None = None
    checkpoint: Path | None = None
    checkpoint_every: int = 100
    resume: bool = False
    stop_at: int | None = None
    overwrite: bool = False

    def check(self) -> None:
        """Raise :class:`~modfsm.engine.kernel.errors.ConfigError` for settings that cannot run.

        Everything is checked before any work: numbers and their ranges, the device
        kind, the recipe file, and the paths the run would write (``--checkpoint``,
        ``--trace``): writable, and not holding another run's files unless
        ``--resume`` or ``--overwrite`` says what to do with them. Nothing is created.
        """
        for name in ("steps", "batch_size", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise _fail(name, value, f"--{name.replace('_', '-')} must be >= 1, got {value}.")
        if self.steps > limits.MAX_STEPS:
            raise _fail(
                "steps", self.steps, f"--steps must be <= {limits.MAX_STEPS}, got {self.steps}."
            )
        if (
            isinstance(self.seed, bool)
            or not isinstance(self.seed, int)
            or not (0 <= self.seed <= limits.MAX_SEED)
        ):
            raise _fail(
                "seed", self.seed, f"--seed must lie in [0, {limits.MAX_SEED}], got {self.seed}."
            )
        if self.batch_size > digits.TRAIN_IMAGES:
            raise _fail(
                "batch_size",
                self.batch_size,
                f"--batch-size {self.batch_size} is larger than the {digits.TRAIN_IMAGES} "
                "training images, so an epoch would have no batch. To fix, pass "
                f"--batch-size {digits.TRAIN_IMAGES} or less.",
            )
        if not (isinstance(self.lr, float | int) and 0 < self.lr <= limits.MAX_LR):
            raise _fail(
                "lr",
                self.lr,
                f"the learning rate must lie in (0, {limits.MAX_LR}] (Adam diverges far below "
                f"{limits.MAX_LR}), got {self.lr}.",
            )
        if self.stop_at is not None and not 1 <= self.stop_at < self.steps:
            raise _fail(
                "stop_at",
                self.stop_at,
                f"--stop-at must lie in [1, {self.steps}) (the run has {self.steps} steps), "
                f"got {self.stop_at}.",
            )
        if (self.resume or self.stop_at is not None) and self.checkpoint is None:
            option = "--resume" if self.resume else "--stop-at"
            raise _fail(
                "checkpoint",
                None,
                f"{option} needs --checkpoint DIR (where the checkpoint is kept). To fix, add "
                "--checkpoint DIR.",
            )
        if self.resume and self.overwrite:
            raise _fail(
                "overwrite",
                True,
                "--resume continues the saved run and --overwrite replaces it: pass one of "
                "them. To fix, drop one.",
            )
        _check_device_kind(self.device)
        if self.recipe is not None and not self.recipe.is_file():
            what = "is a folder" if self.recipe.is_dir() else "does not exist"
            raise _fail(
                "recipe",
                str(self.recipe),
                f"recipe file {str(self.recipe)!r} {what}. To fix, pass the path of a "
                "recipe YAML file, or leave it out to run the default recipe.",
            )
        self._check_outputs()

    def _check_outputs(self) -> None:
        """The checkpoint folder and the trace file: writable, and not another run's."""
        if self.checkpoint is not None:
            problem = paths.folder_problem(self.checkpoint)
            if problem:
                raise _fail(
                    "checkpoint",
                    str(self.checkpoint),
                    f"--checkpoint cannot be written: {problem}. To fix, pass a folder you "
                    "can write to (it is created if missing).",
                )
            if (self.checkpoint / CHECKPOINT_NAME).exists() and not (self.resume or self.overwrite):
                raise _fail(
                    "checkpoint",
                    str(self.checkpoint),
                    f"--checkpoint {str(self.checkpoint)!r} already holds a checkpoint "
                    f"({CHECKPOINT_NAME}), which this run would replace. To fix, pass "
                    "--resume to continue it, --overwrite to start again over it, or another "
                    "folder.",
                )
        if self.trace is not None:
            problem = paths.file_problem(self.trace)
            if problem:
                raise _fail(
                    "trace",
                    str(self.trace),
                    f"--trace cannot be written: {problem}. To fix, pass a file name in a "
                    "folder you can write to.",
                )
            if self.trace.exists() and not (self.resume or self.overwrite):
                raise _fail(
                    "trace",
                    str(self.trace),
                    f"--trace {str(self.trace)!r} already exists. To fix, pass --resume to "
                    "add the resumed run to it, --overwrite to replace it, or another file.",
                )

    def settings(self) -> dict[str, Any]:
        """What a checkpoint must agree on to be resumed by this run."""
        return {
            "seed": self.seed,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "recipe": self.recipe_text(),
            "model": digits.DigitsMLP().describe(),
        }

    def recipe_text(self) -> str:
        """The recipe's YAML text."""
        if self.recipe is None:
            return default_recipe_text()
        return self.recipe.read_text(encoding="utf-8")


@attrs.frozen
class ModifierRow:
    """One modifier in the summary."""

    id: str
    type: str
    window: str
    state: str


@attrs.frozen
class LayerSparsity:
    """One layer's weights in the summary."""

    name: str
    weights: int
    zeros: int

    @property
    def sparsity(self) -> float:
        """The fraction of weights that are zero."""
        return self.zeros / self.weights


@attrs.frozen
class QuantizationRow:
    """One quantized layer in the summary (from the modifier's ``report``)."""

    modifier: str
    name: str
    max_error: float
    bound: float
    relative_error: float


@attrs.frozen
class Evaluation:
    """The test accuracy at one point of the run."""

    step: int
    label: str
    accuracy: float


@attrs.frozen
class RunResult:
    """What a run did: the summary's content."""

    config: RunConfig
    model: str
    steps_done: int
    stopped: bool
    final_loss: float
    modifiers: tuple[ModifierRow, ...]
    layers: tuple[LayerSparsity, ...]
    quantization: tuple[QuantizationRow, ...]
    evaluations: tuple[Evaluation, ...]
    digest: str


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise _fail(
            "device", name, f"{name!r} is not a torch device. To fix, use cpu or cuda."
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise _fail(
            "device",
            name,
            f"device {name!r} is not available here (torch.cuda.is_available() is False). "
            "To fix, use --device cpu.",
        )
    count = torch.cuda.device_count() if device.type == "cuda" else 0
    if device.type == "cuda" and (device.index or 0) >= count:
        has = (
            "1 CUDA device, cuda:0"
            if count == 1
            else f"{count} CUDA devices, cuda:0 to cuda:{count - 1}"
        )
        raise _fail(
            "device",
            name,
            f"device {name!r} is not available here: this machine has {has}. "
            "To fix, use one of those or --device cpu.",
        )
    try:
        torch.zeros(1, device=device)
    except (RuntimeError, AssertionError) as error:
        # torch's CUDA errors run to several lines of advice; the first says what failed
        said = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise _fail(
            "device", name, f"cannot use device {name!r} ({said}). To fix, use --device cpu."
        ) from None
    return device


@attrs.define
class Batches:
    """The training batches in the order ``seed`` fixes; batch ``b`` is found from ``b`` alone.

    Epoch ``e`` is a permutation drawn from ``seed`` and ``e``; the last partial
    batch of an epoch is dropped, so every epoch has the same number of batches.
    """

    x: torch.Tensor
    y: torch.Tensor
    size: int
    seed: int
    _epoch: int = -1
    _order: torch.Tensor | None = None

    @property
    def per_epoch(self) -> int:
        """Batches per epoch."""
        return len(self.y) // self.size

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and labels of batch ``index`` (counted from the start of the run)."""
        epoch, position = divmod(index, self.per_epoch)
        if epoch != self._epoch or self._order is None:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._order = torch.randperm(len(self.y), generator=generator).to(self.x.device)
            self._epoch = epoch
        chosen = self._order[position * self.size : (position + 1) * self.size]
        return self.x[chosen], self.y[chosen]


class _Stopped(Exception):
    """Leaves the session's block at ``--stop-at`` without finalizing."""


def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        predicted = model(x).argmax(dim=1)
    model.train(was_training)
    return float((predicted == y).float().mean())


def _window(modifier: Modifier) -> str:
    start = "-" if modifier.start is None else f"{modifier.start:g}"
    end = "-" if modifier.end is None else f"{modifier.end:g}"
    return f"[{start}, {end})"


def _milestones(session: Session, steps: int) -> dict[int, str]:
    """Steps at which a window opens or closes, with a label (step 0 is the start)."""
    labels: dict[int, list[str]] = {0: ["initial weights"]}
    for modifier_id, modifier in session.modifiers:
        name = f"{type(modifier).__name__} ({modifier_id})"
        if modifier.start is not None and 0 < modifier.start <= steps:
            labels.setdefault(math.ceil(modifier.start), []).append(f"{name} starts")
        if modifier.end is not None and 0 < modifier.end <= steps:
            labels.setdefault(math.ceil(modifier.end), []).append(f"{name} ended")
    return {step: "; ".join(names) for step, names in sorted(labels.items())}


def _digest(model: torch.nn.Module) -> str:
    hasher = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        hasher.update(name.encode())
        hasher.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return hasher.hexdigest()[:16]


def load_checkpoint(folder: Path, config: RunConfig) -> dict[str, Any]:
    """Read the checkpoint in ``folder`` and check everything in it against ``config``.

    Checked: the seal (:func:`checkpoint.read`), exactly the keys a run writes,
    the run's settings, the step, the model's tensors (names, shapes, dtypes),
    the optimizer's state (it fits the model, its learning rate is the run's),
    the accuracies measured, that every float is finite, and that the session
    state fits the recipe and restores (tried on a scratch model and session).

    Raises:
        ConfigError: no checkpoint, or one that this run cannot resume; the
            message names the file and what is wrong.
    """
    path = folder / CHECKPOINT_NAME
    if not path.is_file():
        raise _fail(
            "checkpoint",
            str(path),
            f"no checkpoint to resume in {str(folder)!r} ({CHECKPOINT_NAME} is missing). To "
            "fix, run once with --checkpoint DIR (and --stop-at, or let it save every "
            "--checkpoint-every steps), then --resume.",
        )
    saved = checkpoint.read(path)

    def refuse(problem: str, fix: str = "resume from a checkpoint written by modfsm run") -> None:
        raise _fail("checkpoint", str(path), f"checkpoint {str(path)!r} {problem}. To fix, {fix}.")

    if set(saved) != _PAYLOAD_KEYS:
        missing, extra = sorted(_PAYLOAD_KEYS - set(saved)), sorted(set(saved) - _PAYLOAD_KEYS)
        refuse(f"has the wrong keys (missing {missing}, unexpected {extra})")
    if saved["format"] != CHECKPOINT_FORMAT:
        refuse(f"has format {_short(saved['format'])}, expected {CHECKPOINT_FORMAT!r}")
    expected = config.settings()
    if not checkpoint.is_plain(saved["settings"]) or not checkpoint.is_plain(saved["evaluations"]):
        refuse("holds tensors or objects where plain values belong (settings, evaluations)")
    if not isinstance(saved["settings"], dict) or set(saved["settings"]) != set(expected):
        refuse(f"has settings {_short(saved['settings'])}, not the keys {sorted(expected)}")
    differences = [
        f"{key}: saved {_short(saved['settings'].get(key))}, now {_short(value)}"
        for key, value in expected.items()
        if saved["settings"].get(key) != value
    ]
    if differences:
        raise _fail(
            "checkpoint",
            str(path),
            f"the checkpoint in {str(folder)!r} was saved by a different run: "
            f"{'; '.join(differences)}. To fix, resume with the same recipe, --seed, "
            "--batch-size and --lr.",
        )
    steps_done = saved["steps_done"]
    if isinstance(steps_done, bool) or not isinstance(steps_done, int) or steps_done < 0:
        refuse(f"has steps_done {_short(steps_done)}, not a whole number >= 0")
    if steps_done > limits.MAX_STEPS:
        refuse(f"has steps_done {_short(steps_done)}, past the most --steps ({limits.MAX_STEPS})")
    if steps_done > config.steps:
        raise _fail(
            "steps",
            config.steps,
            f"checkpoint {str(path)!r} is at step {steps_done}, past --steps {config.steps}. "
            f"To fix, pass --steps {steps_done} or more.",
        )
    checkpoint.check_tensors(path, saved)
    model = digits.DigitsMLP()
    problem = checkpoint.tensor_misfit(saved["model"], model.state_dict())
    if problem:
        refuse(f"holds model weights that do not fit {model.describe()}: {problem}")
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    problem = checkpoint.optimizer_misfit(saved["optimizer"], optimizer, config.lr, steps_done)
    if problem:
        refuse(f"holds an optimizer state that does not fit the model: {problem}")
    problem = checkpoint.evaluations_misfit(saved["evaluations"], steps_done)
    if problem:
        refuse(f"holds accuracies that make no sense: {problem}")
    _try_restore(path, saved, config, model, steps_done)
    return saved


_PAYLOAD_KEYS: Final = frozenset(
    {"format", "settings", "steps_done", "session", "model", "optimizer", "evaluations"}
)


def _try_restore(
    path: Path, saved: Mapping[str, Any], config: RunConfig, model: torch.nn.Module,
    steps_done: int,
) -> None:  # fmt: skip
    """Restore the session state into a scratch session on ``model``; refuse what fails.

    The modifiers' own ``load_state_dict`` checks their state (masks, observer
    ranges) against the model; nothing of the real run is touched.
    """
    recipe = Recipe.load(config.recipe if config.recipe is not None else default_recipe_text())
    scratch = Session()
    try:
        with scratch:
            scratch.load_state_dict(saved["session"])
            scratch.initialize(model=model, recipe=recipe)
            # modfsm run takes one optimizer step per batch and saves between batches
            found = (scratch.position.value, scratch.global_step, scratch.global_batch,
                     scratch.batches_since_step)  # fmt: skip
            # and has measured the accuracy at every milestone before the step it saved at
            measured = [(entry[0], entry[1]) for entry in saved["evaluations"]]
            due = [(s, label) for s, label in _milestones(scratch, config.steps).items()
                   if s < steps_done]  # fmt: skip
            # and leaves the epoch length unset (an epoch is a pass over the training set)
            pace = (scratch.batches_per_step, scratch.steps_per_epoch)
            if pace != (1, None):
                problem = (
                    "is inconsistent: modfsm run takes one optimizer step a batch and sets no "
                    f"epoch length, but the session holds batches_per_step {_short(pace[0])} "
                    f"and steps_per_epoch {_short(pace[1])}"
                )
            elif found != ("idle", steps_done, steps_done, 0):
                problem = (
                    "is inconsistent: modfsm run saves between batches, one step a batch, "
                    f"at step {steps_done}, but the session is {found[0]!r} at step "
                    f"{found[1]}, batch {found[2]} ({found[3]} batches since the last step)"
                )
            elif measured != due:
                problem = (
                    f"holds accuracies measured at {[s for s, _ in measured]}, but a run of "
                    f"this recipe at step {steps_done} has measured them at "
                    f"{[s for s, _ in due]} (with their labels)"
                )
            else:
                problem = ""
            raise _Stopped
    except _Stopped:
        pass
    except LifecycleError as error:
        problem = f"holds a session state this run cannot resume ({error})"
    except Exception as error:  # a modifier's state that does not restore
        problem = (
            f"holds a session state that does not restore ({type(error).__name__}: "
            f"{_first_line(error)})"
        )
    if problem:
        raise _fail(
            "checkpoint",
            str(path),
            f"checkpoint {str(path)!r} {problem}. To fix, resume from a checkpoint written by "
            "this run.",
        )


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def run(
    config: RunConfig,
    *,
    progress: bool = False,
    on_step: Callable[[Session], None] | None = None,
) -> RunResult:
    """Train and compress the digits MLP as ``config`` says.

    Args:
        config: the run's settings.
        progress: show a progress bar on stderr.
        on_step: called after every step with the session (for tests and tools).

    Raises:
        ConfigError: bad settings, recipe or checkpoint (before any training step).
    """
    config.check()
    device = _device(config.device)
    recipe = Recipe.load(config.recipe if config.recipe is not None else default_recipe_text())
    saved = None
    if config.resume:
        assert config.checkpoint is not None, "RunConfig.check() requires it with resume"
        saved = load_checkpoint(config.checkpoint, config)
    if config.trace is not None:
        config.trace.parent.mkdir(parents=True, exist_ok=True)
    if config.overwrite:  # asked for: another run's checkpoint and trace go
        for old in (
            config.checkpoint / CHECKPOINT_NAME if config.checkpoint is not None else None,
            config.trace,
        ):
            if old is not None and old.is_file():
                old.unlink()
    data = digits.load()
    train_x, train_y = data.train_x.to(device), data.train_y.to(device)
    test = (data.test_x.to(device), data.test_y.to(device))
    batches = Batches(train_x, train_y, config.batch_size, config.seed)

    torch.manual_seed(config.seed)
    model = digits.DigitsMLP().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    calibration = [batches.batch(i)[0] for i in range(_CALIBRATION_BATCHES)]
    session = Session()
    evaluations: list[Evaluation] = []
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        session.load_state_dict(saved["session"])
        evaluations = [Evaluation(*entry) for entry in saved["evaluations"]]
    loss = float("nan")
    try:
        # Leaving the block by an exception (here: _Stopped) removes every hook and
        # closes the trace without finalizing; see Session.__exit__.
        with session:
            session.initialize(
                model=model,
                optimizer=optimizer,
                recipe=recipe,
                calib_data=calibration,
                train_data=(train_x, train_y),
                wrap_optimizer=True,
                trace=config.trace or False,
            )
            loss = _train(
                config, session, model, optimizer, batches, test, evaluations,
                progress, on_step,
            )  # fmt: skip
            if config.stop_at is not None:
                raise _Stopped
            evaluations.append(
                Evaluation(session.global_step, "after the last step", _accuracy(model, *test))
            )
            session.finalize()
            evaluations.append(
                Evaluation(session.global_step, "after finalize", _accuracy(model, *test))
            )
    except _Stopped:
        pass
    return RunResult(
        config=config,
        model=model.describe(),
        steps_done=session.global_step,
        stopped=config.stop_at is not None,
        final_loss=loss,
        modifiers=tuple(
            ModifierRow(modifier_id, type(m).__name__, _window(m), str(m.lifecycle_state))
            for modifier_id, m in session.modifiers
        ),
        layers=tuple(
            LayerSparsity(name, layer.weight.numel(), int((layer.weight == 0).sum()))
            for name, layer in model.named_children()
            if isinstance(layer, torch.nn.Linear)
        ),
        quantization=tuple(_quantization_rows(session)),
        evaluations=tuple(evaluations),
        digest=_digest(model),
    )


def _train(
    config: RunConfig,
    session: Session,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Batches,
    test: tuple[torch.Tensor, torch.Tensor],
    evaluations: list[Evaluation],
    progress: bool,
    on_step: Callable[[Session], None] | None,
) -> float:
    """The training loop, up to ``--stop-at`` or ``--steps``; returns the last loss."""
    from tqdm import tqdm

    milestones = _milestones(session, config.steps)
    measured = {entry.step for entry in evaluations}
    last = config.stop_at if config.stop_at is not None else config.steps
    loss_value = float("nan")
    bar = tqdm(
        total=config.steps,
        initial=session.global_step,
        disable=not progress,
        desc="modfsm run",
        unit="step",
        leave=False,
    )
    try:
        while session.global_step < last:
            step = session.global_step
            if step in milestones and step not in measured:
                evaluations.append(Evaluation(step, milestones[step], _accuracy(model, *test)))
                measured.add(step)
            x, y = batches.batch(session.global_batch)
            session.batch_start(x)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            session.loss_calculated(loss)
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]  # torch leaves it unannotated
            optimizer.step()  # the session reports OPTIM_PRE_STEP / OPTIM_POST_STEP itself
            session.batch_end()
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise _fail(
                    "lr",
                    config.lr,
                    f"training diverged at step {step + 1}: the loss is {loss_value}. To fix, "
                    f"lower --lr (now {config.lr}).",
                )
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss_value:.3f}")
            if on_step is not None:
                on_step(session)
            if config.checkpoint is not None and (
                session.global_step % config.checkpoint_every == 0
                or session.global_step == config.stop_at
            ):
                _save(config, session, model, optimizer, evaluations)
    finally:
        bar.close()
    step = session.global_step
    if step in milestones and step not in measured and config.stop_at is None:
        evaluations.append(Evaluation(step, milestones[step], _accuracy(model, *test)))
    return loss_value


def _save(
    config: RunConfig,
    session: Session,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    evaluations: list[Evaluation],
) -> None:
    assert config.checkpoint is not None
    checkpoint.write(
        config.checkpoint / CHECKPOINT_NAME,
        {
            "format": CHECKPOINT_FORMAT,
            "settings": config.settings(),
            "steps_done": session.global_step,
            "session": session.state_dict(),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "evaluations": [(e.step, e.label, e.accuracy) for e in evaluations],
        },
    )


def _quantization_rows(session: Session) -> Iterator[QuantizationRow]:
    for modifier_id, modifier in session.modifiers:
        report = getattr(modifier, "report", None)
        if isinstance(report, Mapping):
            for name, values in report.items():
                yield QuantizationRow(
                    modifier_id,
                    name,
                    values["max_error"],
                    values["bound"],
                    values["relative_error"],
                )


def format_summary(result: RunResult) -> str:
    """The summary ``modfsm run`` prints."""
    config = result.config
    recipe = "default recipe" if config.recipe is None else str(config.recipe)
    lines = [
        f"modfsm run: {recipe}, {config.steps} steps, seed {config.seed}, "
        f"batch {config.batch_size}, device {config.device}",
        f"model: {result.model}; data: scikit-learn digits, "
        f"{digits.TRAIN_IMAGES} train / {digits.TEST_IMAGES} test images",
    ]
    if result.stopped:
        lines.append(
            f"stopped after step {result.steps_done} (--stop-at); checkpoint in "
            f"{config.checkpoint}. Resume with --resume --checkpoint {config.checkpoint}."
        )
        return "\n".join(lines) + "\n"
    lines += ["", "modifiers"]
    lines += _table(
        ("id", "type", "window (steps)", "state"),
        [(row.id, row.type, row.window, row.state) for row in result.modifiers],
    )
    lines += ["", "sparsity per layer"]
    lines += _table(
        ("layer", "weights", "zeros", "sparsity"),
        [
            (row.name, f"{row.weights:,}", f"{row.zeros:,}", f"{row.sparsity:.1%}")
            for row in result.layers
        ],
    )
    if result.quantization:
        lines += ["", "quantization error per layer (weights, at finalize)"]
        lines += _table(
            ("layer", "max |w - q(w)|", "bound scale/2", "relative"),
            [
                (row.name, f"{row.max_error:.2e}", f"{row.bound:.2e}", f"{row.relative_error:.2%}")
                for row in result.quantization
            ],
        )
    lines += ["", f"accuracy on {digits.TEST_IMAGES} test images"]
    lines += _table(
        ("step", "when", "accuracy"),
        [(str(e.step), e.label, f"{e.accuracy:.1%}") for e in result.evaluations],
    )
    lines += ["", f"final loss {result.final_loss:.4f}; weights sha256 {result.digest}"]
    return "\n".join(lines) + "\n"


def summary_data(result: RunResult) -> dict[str, Any]:
    """The summary as plain data (``modfsm run --json``): the same figures as
    :func:`format_summary`, unrounded."""
    config = result.config
    return {
        "recipe": None if config.recipe is None else str(config.recipe),
        "steps": config.steps,
        "seed": config.seed,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "device": config.device,
        "model": result.model,
        "steps_done": result.steps_done,
        "stopped": result.stopped,
        "final_loss": result.final_loss,
        "modifiers": [attrs.asdict(row) for row in result.modifiers],
        "layers": [{**attrs.asdict(row), "sparsity": row.sparsity} for row in result.layers],
        "quantization": [attrs.asdict(row) for row in result.quantization],
        "evaluations": [attrs.asdict(row) for row in result.evaluations],
        "weights_sha256": result.digest,
    }


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    rule = tuple("-" * width for width in widths)
    lines = []
    for row in (header, rule, *rows):
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        lines.append(("  " + "  ".join(cells)).rstrip())
    return lines
