"""The training loop's weight average (train.ema_decay): the formula, selection on it, and resuming it."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from fashion_core.config.checks import ConfigError
from fashion_core.config.schema import AugmentConfig, TrainConfig, load_experiment
from fashion_core.engine.train import WeightEMA, evaluate, fit, load_checkpoint
from fashion_core.losses import Criterion
from tests.helpers.train import TinyNet, toy_data

NO_AUG = AugmentConfig(crop_scale_min=1.0, hflip=False, jitter=0.0)


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(8 * 6 * 3)
        self.fc = nn.Linear(8 * 6 * 3, 3)

    def forward(self, x, batch=None):
        return {"logits": self.fc(self.bn(x.flatten(1)))}


def test_ema_follows_the_warmed_up_formula_and_copies_integer_buffers():
    torch.manual_seed(0)
    live = BNNet()
    ema = WeightEMA(live, decay=0.9)
    expect = {k: v.clone() for k, v in live.state_dict().items()}
    for t in range(1, 30):
        live.train()
        live(torch.randn(16, 8, 6, 3))["logits"].sum().backward()
        with torch.no_grad():
            for p in live.parameters():
                p -= 0.1 * p.grad
                p.grad = None
        ema.update()
        d = min(0.9, (1 + t) / (10 + t))
        for k, v in live.state_dict().items():
            expect[k] = d * expect[k] + (1 - d) * v if v.is_floating_point() else v.clone()
    got = ema.module.state_dict()
    for k, v in expect.items():
        torch.testing.assert_close(got[k], v, rtol=1e-4, atol=1e-5, msg=k)
    assert int(got["bn.num_batches_tracked"]) == 29
    assert not torch.equal(got["fc.weight"], live.fc.weight)  # an average, not a copy


def _fit(ema_decay: float, checkpoint=None, resume=None, on_epoch=None, live=None):
    """A short fit of BNNet on toy data; ``live``: a dict that gets the live (trained) weights after each epoch."""
    torch.manual_seed(0)
    model = BNNet()
    if live is not None:
        outer = on_epoch

        def on_epoch(epoch, metrics):
            live[epoch] = copy.deepcopy(model.state_dict())
            if outer is not None:
                outer(epoch, metrics)

    cfg = TrainConfig(
        epochs=4,
        batch_size=16,
        lr=0.05,
        warmup_epochs=0.0,
        patience=0,
        device="cpu",
        augment=NO_AUG,
        ema_decay=ema_decay,
    )
    res = fit(
        model,
        toy_data(100, 1),
        toy_data(40, 2),
        Criterion(nn.CrossEntropyLoss()),
        [{"params": list(model.parameters())}],
        cfg,
        torch.device("cpu"),
        checkpoint_path=checkpoint,
        resume=resume,
        on_epoch=on_epoch,
    )
    return model, res


def test_fit_validates_and_keeps_the_averaged_weights():
    weights: dict[int, dict] = {}
    live, res = _fit(0.8, live=weights)
    kept = copy.deepcopy(live)
    kept.load_state_dict(res.best_state)
    val = toy_data(40, 2)
    assert evaluate(kept, val, torch.device("cpu"))["top1_mean"] == pytest.approx(res.best_val)
    assert res.history[res.best_epoch - 1]["val_top1_mean"] == pytest.approx(res.best_val)
    # the kept weights are the average, not the live ones of the chosen epoch
    assert not torch.equal(res.best_state["fc.weight"], weights[res.best_epoch]["fc.weight"])


def test_interrupted_fit_with_ema_resumes_to_the_same_result(tmp_path):
    _, full = _fit(0.8)

    class Stop(Exception):
        pass

    def stop_after_two(epoch, metrics):
        if epoch == 2:
            raise Stop

    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(Stop):
        _fit(0.8, checkpoint=ckpt, on_epoch=stop_after_two)
    _, resumed = _fit(0.8, resume=load_checkpoint(ckpt))
    assert [h["val_top1_mean"] for h in resumed.history] == [h["val_top1_mean"] for h in full.history]
    for k, v in full.best_state.items():
        torch.testing.assert_close(resumed.best_state[k], v, msg=k)


def test_resuming_a_plain_checkpoint_with_ema_is_refused(tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    _fit(0.0, checkpoint=ckpt)
    with pytest.raises(ValueError, match="no weight average"):
        _fit(0.8, resume=load_checkpoint(ckpt))


@pytest.mark.parametrize("bad", ["1.0", "-0.1", "nan"])
def test_ema_decay_out_of_range_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="ema_decay"):
        load_experiment(overrides={"train.ema_decay": bad})


def test_fit_without_validation_keeps_the_last_epochs_weights():
    """data.val_fraction=0: nothing to select on, so every epoch runs and the last weights are kept (tagged)."""
    torch.manual_seed(0)
    model = BNNet()
    initial = copy.deepcopy(model.state_dict())
    cfg = TrainConfig(
        epochs=3, batch_size=16, lr=0.05, warmup_epochs=0.0, patience=1, device="cpu", augment=NO_AUG, ema_decay=0.0
    )
    res = fit(
        model,
        toy_data(100, 1),
        toy_data(0, 2),
        Criterion(nn.CrossEntropyLoss()),
        [{"params": list(model.parameters())}],
        cfg,
        torch.device("cpu"),
    )
    assert res.selection == "last_epoch" and res.best_epoch == 3 and len(res.history) == 3
    assert not res.stopped_early
    assert res.best_val != res.best_val  # NaN: no validation score exists
    for k, v in model.state_dict().items():
        torch.testing.assert_close(res.best_state[k], v.detach().cpu(), msg=k)
    assert not torch.equal(res.best_state["fc.weight"], initial["fc.weight"])  # trained, not the initial weights


def test_fit_with_validation_says_it_selected_on_it():
    _, res = _fit(0.0)
    assert res.selection == "val_top1_mean" and res.best_val == res.best_val


def _count_host_reads(monkeypatch) -> list[str]:
    """Record every call that reads a tensor's value back to the host (each one a sync on a GPU)."""
    calls: list[str] = []
    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _name=name, _original=original, **k):
            calls.append(_name)
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return calls


@pytest.mark.parametrize("n_items", [48, 160])
def test_one_epoch_reads_the_device_once_whatever_the_number_of_steps(monkeypatch, n_items):
    from fashion_core.data.loader import batches
    from fashion_core.engine.train import build_optimizer, train_one_epoch

    torch.manual_seed(0)
    model = TinyNet()
    cfg = TrainConfig(batch_size=16, optimizer="sgd", lr=0.01, augment=AugmentConfig(jitter=0.2), device="cpu")
    opt = build_optimizer([{"params": list(model.parameters())}], cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    gen = torch.Generator().manual_seed(0)
    data = toy_data(n_items, 1)
    calls = _count_host_reads(monkeypatch)
    loss_sum, hits, seen = train_one_epoch(
        model,
        Criterion(nn.CrossEntropyLoss()),
        opt,
        sched,
        batches(data, 16, shuffle=True, generator=gen),
        torch.device("cpu"),
        cfg,
        gen,
    )
    monkeypatch.undo()
    assert seen == n_items and 0 <= hits <= n_items and loss_sum > 0
    assert sorted(calls) == ["__float__", "__int__"]  # the two sums, once per epoch: 3 steps or 10


def test_fit_moves_the_splits_with_their_to_device(monkeypatch):
    from fashion_core.data.loader import TensorData

    moved = []
    original = TensorData.to

    def spy(self, device):
        moved.append((len(self), torch.device(device).type))
        return original(self, device)

    monkeypatch.setattr(TensorData, "to", spy)
    _fit(0.0)
    assert moved == [(100, "cpu"), (40, "cpu")]  # train and validation, once each for the whole fit


def test_place_data_moves_a_split_to_the_device():
    from fashion_core.engine.devices import place_data

    data = toy_data(10, 0)
    placed = place_data(data, torch.device("cpu"))
    assert placed.images.device.type == "cpu" and torch.equal(placed.images, data.images)


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x, batch=None):
        return {"logits": self.fc(self.conv(x).mean((2, 3)))}


def test_cpu_scoring_runs_channels_last_with_the_same_scores():
    from fashion_core.data.loader import to_float
    from fashion_core.engine.train import predict_scores

    torch.manual_seed(0)
    model, data = ConvNet(), toy_data(20, 3)
    with torch.no_grad():
        expect = model.eval()(to_float(data.images))["logits"].numpy()  # default (contiguous) layout
    got = predict_scores(model, data, torch.device("cpu"))
    assert model.conv.weight.is_contiguous(memory_format=torch.channels_last)  # oneDNN's layout on CPUs
    torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(expect), rtol=1e-5, atol=1e-5)


def test_cpu_training_runs_channels_last(monkeypatch):
    import fashion_core.engine.train as train_mod

    layouts = []
    original = train_mod.augment

    def spy(images, cfg, gen, channels_last=False):
        layouts.append(channels_last)
        return original(images, cfg, gen, channels_last)

    monkeypatch.setattr(train_mod, "augment", spy)
    torch.manual_seed(0)
    model = ConvNet()
    cfg = TrainConfig(epochs=1, batch_size=16, lr=0.05, warmup_epochs=0.0, patience=0, device="cpu", augment=NO_AUG)
    fit(
        model,
        toy_data(40, 1),
        toy_data(20, 2),
        Criterion(nn.CrossEntropyLoss()),
        [{"params": list(model.parameters())}],
        cfg,
        torch.device("cpu"),
    )
    assert layouts == [True, True]  # every batch of the epoch (40 items, batch 16, last partial dropped)
    assert model.conv.weight.is_contiguous(memory_format=torch.channels_last)
