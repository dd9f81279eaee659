"""BN diagnostics: each evaluation mode against a computation written from its definition."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_here
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from normbench.norms import BatchNorm2d, set_emulated_gpus
from normbench.train.diagnostics import bn_diagnostics, per_gpu_batches, permuted
from normbench.train.distributed import DistEnv
from normbench.train.loader import ValSampler

ENV = DistEnv(0, 1, 0, torch.device("cpu"), "gloo")
CHUNKS, BATCH = 2, 3
HEADLINE = 12.5  # the val error the loop measured with the model's own statistics
SEED = 3  # the cell's seed: it permutes the val set before the batch mode cuts it


class Probe(nn.Module):
    """conv -> per-GPU BN -> pooled linear head; keeps the inputs of its last forward."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = BatchNorm2d(4, momentum=0.3, eval_stats="first")
        self.head = nn.Linear(4, 3)
        self.bn.weight.data.uniform_(0.5, 1.5)
        self.bn.bias.data.uniform_(-0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def _data(n: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 1, 5, 5, generator=generator) * 2 + 1,
                         torch.randint(0, 3, (n,), generator=generator))  # fmt: skip


def _trained_probe() -> Probe:
    model = Probe()
    set_emulated_gpus(model, CHUNKS)
    model.train()
    with torch.no_grad():
        for images, _ in DataLoader(_data(24, 1), batch_size=BATCH * CHUNKS):
            model(images)
    return model.eval()


def _error(model: nn.Module, loader) -> float:
    model.eval()
    with torch.no_grad():
        wrong = sum(int((model(x).argmax(1) != y).sum()) for x, y in loader)
    return 100.0 * wrong / len(loader.dataset)


def _run(model: nn.Module, train: TensorDataset, val: TensorDataset, batches: int, calls: list,
         batch: int = BATCH):  # fmt: skip
    def evaluate(m, loader):  # record the statistics each evaluation used
        calls.append((m.bn.running_mean.clone(), m.bn.running_var.clone()))
        return _error(m, loader)

    val_loader = DataLoader(val, batch_size=BATCH * CHUNKS,
                            sampler=ValSampler(len(val), num_replicas=1, rank=0))  # fmt: skip
    return bn_diagnostics(
        model, train_loader=DataLoader(train, batch_size=BATCH * CHUNKS), val_loader=val_loader,
        evaluate=evaluate, batch=batch, chunks=CHUNKS, precise_batches=batches, env=ENV,
        headline=("first", HEADLINE), seed=SEED,
    )  # fmt: skip


def test_each_mode_uses_the_statistics_it_names_and_the_model_is_left_as_it_was():
    model = _trained_probe()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    alt = (model.bn.alt_running_mean.clone(), model.bn.alt_running_var.clone())
    train, val = _data(18, 2), _data(10, 3)
    calls: list = []
    errors = _run(model, train, val, batches=2, calls=calls)
    assert list(errors) == ["ema_average", "ema_first", "precise", "batch", "seconds"]

    # The headline mode ("first", the model's own) is what the loop measured, not re-measured.
    assert errors["ema_first"] == HEADLINE
    (avg_mean, _), (precise_mean, precise_var) = calls
    torch.testing.assert_close(avg_mean, alt[0])  # eval_stats=first: "average" is the alt chain

    # PreciseBN: population mean and (unbiased) variance of the BN's inputs over the first two
    # training batches (12 images; the conv before it has no batch statistics).
    with torch.no_grad():
        inputs = model.conv(train.tensors[0][:12])
    torch.testing.assert_close(precise_mean, inputs.mean((0, 2, 3)))
    torch.testing.assert_close(precise_var, inputs.var((0, 2, 3), unbiased=True))

    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], msg=key)
    assert model.bn.chunks == CHUNKS and not model.training


def test_batch_mode_normalizes_each_gpus_val_batch_by_its_own_statistics():
    model = _trained_probe()
    val = _data(10, 3)
    errors = _run(model, _data(12, 2), val, batches=1, calls=[])
    # By hand: the val set in the seed's order; GPU j's share is positions j, j + 2, ... of it,
    # cut into batches of 3 (the last smaller).
    order = torch.randperm(10, generator=torch.Generator().manual_seed(SEED)).tolist()
    reference = Probe()
    reference.load_state_dict(model.state_dict())
    reference.train()
    wrong = 0
    with torch.no_grad():
        for indices in per_gpu_batches(order, BATCH, CHUNKS):
            x, y = val.tensors[0][indices], val.tensors[1][indices]
            wrong += int((reference(x).argmax(1) != y).sum())
    assert errors["batch"] == pytest.approx(100.0 * wrong / 10)


def test_per_gpu_batches_interleave_the_gpus_like_training():
    assert per_gpu_batches(list(range(10)), 3, 2) == [[0, 2, 4], [6, 8], [1, 3, 5], [7, 9]]
    assert per_gpu_batches([5, 7, 9], 2, 1) == [[5, 7], [9]]


class Recorder(Probe):
    """A Probe that records the labels of the images in each train-mode forward (each image's
    pixels hold its index in the val set)."""

    def __init__(self, labels: torch.Tensor) -> None:
        super().__init__()
        self.labels, self.batches = labels, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.batches.append(self.labels[x[:, 0, 0, 0].long()].tolist())
        return super().forward(x)


def test_batch_mode_cuts_a_class_sorted_val_set_into_mixed_batches():
    # Stored class by class, 4 images per class: cut in order, every GPU's batch of 2 would be
    # one class (GPU 0 takes positions 0 and 2, GPU 1 positions 1 and 3, ...).
    labels = torch.arange(5).repeat_interleave(4)
    images = torch.arange(20.0).view(20, 1, 1, 1).expand(20, 1, 5, 5)
    in_order = [labels[b].tolist() for b in per_gpu_batches(list(range(20)), 2, CHUNKS)]
    assert all(len(set(b)) == 1 for b in in_order)
    model = Recorder(labels)
    set_emulated_gpus(model, CHUNKS)
    model.eval()
    _run(model, _data(12, 2), TensorDataset(images, labels), batches=1, calls=[], batch=2)
    batch_mode = model.batches[-len(in_order) :]  # after PreciseBN's training batch
    assert sorted(sum(batch_mode, [])) == labels.tolist()  # every image once
    assert sum(len(set(b)) > 1 for b in batch_mode) >= len(batch_mode) // 2


def test_permuted_positions_split_the_val_set_like_one_process():
    size, seed = 11, 7
    whole = permuted(list(range(size)), size, seed)
    assert sorted(whole) == list(range(size)) and whole != list(range(size))
    # Two ranks of one GPU each form the batches of one process emulating both GPUs.
    ranks = [per_gpu_batches(permuted(list(range(r, size, 2)), size, seed), 2, 1) for r in (0, 1)]
    assert ranks[0] + ranks[1] == per_gpu_batches(whole, 2, 2)


@pytest.mark.slow
def test_a_bn_cell_records_every_mode_and_its_headline_and_the_option_turns_it_off(
    tmp_path, tiny, capsys
):
    common = [*tiny, "norm=bn", "norm.eval_stats=first"]
    for enabled in ("true", "false"):
        out = tmp_path / enabled
        result = run_here(["train", *common, f"diagnostics.enabled={enabled}", f"out_dir={out}"],
                          capsys)  # fmt: skip
        assert result.returncode == 0, result.stderr
        metrics = json.loads(next(out.glob("*/*/metrics.json")).read_text())
        if enabled == "true":
            modes = ("ema_average", "ema_first", "precise", "batch")
            assert all(0 <= metrics[f"val_error_{m}"] <= 100 for m in modes)
            # The headline is the eval_stats mode, measured on the same final weights.
            assert metrics["val_error_ema_first"] == metrics["val_error_final"]
            assert metrics["bn_eval_stats"] == "first" and metrics["diagnostics_time_s"] > 0
        else:
            assert "val_error_precise" not in metrics


@pytest.mark.slow
def test_batch_free_norms_have_no_diagnostics(tmp_path, tiny, capsys):
    result = run_here(["train", *tiny, "norm=gn", f"out_dir={tmp_path}"], capsys)
    assert result.returncode == 0, result.stderr
    metrics = json.loads(next(tmp_path.glob("*/*/metrics.json")).read_text())
    assert "val_error_batch" not in metrics
