"""A fit interrupted mid-schedule resumes exactly: BackupAndRestore and ModelCheckpoint with wrapped models."""

import numpy as np
import pytest
from helpers import compile_classifier, dense_digits_model

import tfcompress as tfc
from tfcompress._keras import keras
from tfcompress.saving import load_model

EPOCHS = 4
INTERRUPTED_AFTER = 1  # epochs 0 and 1 done; pruning still ramping, QAT not started


class Interrupt(keras.callbacks.Callback):
    """Raises after an epoch, as a killed job would stop (the pattern of BackupAndRestore's own tests)."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch == INTERRUPTED_AFTER:
            raise RuntimeError("interrupted")


class EpochLog(keras.callbacks.Callback):
    """Keeps each epoch's logs, since `History` is lost when fit raises."""

    def __init__(self):
        super().__init__()
        self.epochs = {}

    def on_epoch_end(self, epoch, logs=None):
        self.epochs[epoch] = dict(logs)


def compressed_model():
    pruned = tfc.prune(dense_digits_model(seed=7, width=32), 0.8, end=1.0)
    return compile_classifier(tfc.quantize(pruned, start=0.6))


def fit(model, digits, callbacks, **kwargs):
    log = EpochLog()
    x, y = digits[0][:256], digits[1][:256]
    try:
        model.fit(x, y, epochs=EPOCHS, batch_size=64, shuffle=False, verbose=0,
                  callbacks=[tfc.CompressionCallback(verbose=0), log, *callbacks], **kwargs)
    except RuntimeError as error:
        assert str(error) == "interrupted"
    return log.epochs


@pytest.fixture(scope="module")
def straight_fit(digits):
    """The fit straight through, as (logs by epoch, `sparsity` and `qat_phase` by step)."""
    steps = StepLog()
    return fit(compressed_model(), digits, [steps]), steps.steps


@pytest.fixture(scope="module")
def uninterrupted(straight_fit):
    return straight_fit[0]


@pytest.fixture(scope="module")
def interrupted(digits, tmp_path_factory):
    """One fit cut after epoch 1, backed up three ways: BackupAndRestore, a .keras checkpoint, a weights file.

    Returns (logs by epoch, paths); each test resumes from one path.
    """
    directory = tmp_path_factory.mktemp("interrupted")
    paths = {"backup": str(directory / "backup"), "model": str(directory / "checkpoint.keras"),
             "weights": str(directory / "weights.h5")}
    savers = [
        keras.callbacks.BackupAndRestore(paths["backup"]),
        keras.callbacks.ModelCheckpoint(paths["model"]),
        keras.callbacks.ModelCheckpoint(paths["weights"], save_weights_only=True),
    ]
    return fit(compressed_model(), digits, [*savers, Interrupt()]), paths


def assert_same_course(epochs, expected):
    assert sorted(epochs) == list(range(EPOCHS))
    for epoch in range(EPOCHS):
        assert epochs[epoch]["sparsity"] == pytest.approx(expected[epoch]["sparsity"], abs=1e-6), epoch
        assert epochs[epoch]["qat_phase"] == expected[epoch]["qat_phase"], epoch
        assert epochs[epoch]["loss"] == pytest.approx(expected[epoch]["loss"], rel=1e-3), epoch


def test_the_schedule_is_mid_course_where_the_fit_is_cut(uninterrupted):
    sparsity = [uninterrupted[e]["sparsity"] for e in range(EPOCHS)]
    assert sparsity[INTERRUPTED_AFTER] < 0.79 and sparsity[-1] == pytest.approx(0.8, abs=0.01)
    assert [uninterrupted[e]["qat_phase"] for e in range(EPOCHS)] == [0.0, 0.0, 1.0, 1.0]


def test_backup_and_restore_resumes_a_fresh_process_exactly(uninterrupted, interrupted, digits):
    first, paths = interrupted
    assert sorted(first) == [0, 1]
    # A new model object, as a restarted job builds it; BackupAndRestore restores weights, optimizer and epoch.
    second = fit(compressed_model(), digits, [keras.callbacks.BackupAndRestore(paths["backup"])])
    assert sorted(second) == [2, 3]
    assert_same_course({**first, **second}, uninterrupted)


def test_model_checkpoint_file_resumes_exactly(uninterrupted, interrupted, digits):
    first, paths = interrupted
    second = fit(load_model(paths["model"]), digits, [], initial_epoch=INTERRUPTED_AFTER + 1)
    assert_same_course({**first, **second}, uninterrupted)


def test_weights_only_checkpoint_restores_into_a_rebuilt_model(uninterrupted, interrupted, digits):
    first, paths = interrupted
    model = compressed_model()
    model.load_weights(paths["weights"])
    second = fit(model, digits, [], initial_epoch=INTERRUPTED_AFTER + 1)
    # Without optimizer state the loss path differs a little; the schedule does not.
    for epoch in (2, 3):
        assert second[epoch]["sparsity"] == pytest.approx(uninterrupted[epoch]["sparsity"], abs=1e-6)
        assert second[epoch]["qat_phase"] == uninterrupted[epoch]["qat_phase"]
    assert sorted({**first, **second}) == list(range(EPOCHS))
    np.testing.assert_array_less(second[3]["loss"], first[0]["loss"])


# ---- mid-epoch backups: BackupAndRestore(save_freq=<int>) ----

STEPS_PER_EPOCH = 4  # 256 examples in batches of 64
INTERRUPTED_AT_STEP = 6  # epoch 1, batch 2: pruning ramping, QAT starts at step 10


class StepLog(keras.callbacks.Callback):
    """Keeps `sparsity` and `qat_phase` after every optimizer step, by global step number."""

    def __init__(self):
        super().__init__()
        self.steps, self.epoch = {}, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        step = self.epoch * STEPS_PER_EPOCH + int(batch)
        self.steps[step] = {key: float(logs[key]) for key in ("sparsity", "qat_phase")}


class InterruptAtStep(StepLog):
    def on_train_batch_end(self, batch, logs=None):
        if self.epoch * STEPS_PER_EPOCH + int(batch) == INTERRUPTED_AT_STEP:
            raise RuntimeError("interrupted")


def fit_steps(model, digits, callbacks):
    log = StepLog()
    x, y = digits[0][:256], digits[1][:256]
    try:
        model.fit(x, y, epochs=EPOCHS, batch_size=64, shuffle=False, verbose=0, callbacks=[*callbacks, log])
    except RuntimeError as error:
        assert str(error) == "interrupted"
    return log.steps


@pytest.fixture(scope="module")
def uninterrupted_steps(straight_fit):
    return straight_fit[1]


def resume_mid_epoch(digits, backup, compression_first):
    def callbacks(*extra):
        backup_and_restore = keras.callbacks.BackupAndRestore(backup, save_freq=1)
        compression = tfc.CompressionCallback(verbose=0)
        ordered = [compression, backup_and_restore] if compression_first else [backup_and_restore, compression]
        return [*ordered, *extra]

    # The interruption comes right after the backup of step 6, as a job killed mid-epoch.
    first = fit_steps(compressed_model(), digits, callbacks(InterruptAtStep()))
    second = fit_steps(compressed_model(), digits, callbacks())
    return first, second


def assert_same_steps(first, second, expected):
    total = EPOCHS * STEPS_PER_EPOCH
    # The resumed fit continues mid-epoch, after the step the backup holds, not at an epoch start.
    assert sorted(first) == list(range(INTERRUPTED_AT_STEP)) and sorted(second) == list(range(INTERRUPTED_AT_STEP + 1, total))
    assert expected[INTERRUPTED_AT_STEP]["qat_phase"] == 0.0 and expected[total - 1]["qat_phase"] == 1.0
    assert expected[total - 1]["sparsity"] == pytest.approx(0.8, abs=0.01)
    for step, values in {**first, **second}.items():
        assert values["sparsity"] == pytest.approx(expected[step]["sparsity"], abs=1e-6), step
        assert values["qat_phase"] == expected[step]["qat_phase"], step


def test_mid_epoch_backup_resumes_at_the_same_steps(uninterrupted_steps, digits, tmp_path):
    """BackupAndRestore listed before tfc.CompressionCallback.

    tf_keras re-reads the resumed epoch's data from its start, so losses are not compared;
    the schedules follow the step counters, which the backup restores.
    """
    first, second = resume_mid_epoch(digits, str(tmp_path / "backup"), compression_first=False)
    assert_same_steps(first, second, uninterrupted_steps)


def test_mid_epoch_backup_listed_after_the_compression_callback_resumes_at_the_same_steps(
    uninterrupted_steps, digits, tmp_path
):
    # The backup restores the optimizer's step after CompressionCallback.on_train_begin has run.
    first, second = resume_mid_epoch(digits, str(tmp_path / "backup"), compression_first=True)
    assert_same_steps(first, second, uninterrupted_steps)
