"""Engine behaviour: targets, init modes, batching, dtypes, the user's model left alone, clear errors."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mri_lrp.errors import SettingsError, UnsupportedLayerError
from mri_lrp.lrp import Explainer, explain


def _cnn(softmax: nn.Module | None = None) -> nn.Sequential:
    torch.manual_seed(0)
    layers = [nn.Conv2d(1, 6, 5, padding=2), nn.BatchNorm2d(6), nn.ReLU(inplace=True), nn.MaxPool2d(2),
              nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.Dropout(0.3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
              nn.Linear(8, 3)]
    model = nn.Sequential(*layers, *([softmax] if softmax is not None else []))
    bn = model[1]
    bn.running_mean.uniform_(-0.3, 0.3)
    bn.running_var.uniform_(0.5, 1.5)
    return model


def test_explain_returns_relevance_shaped_like_input_with_per_sample_diagnostics() -> None:
    model = _cnn().eval()
    x = torch.randn(4, 1, 16, 16)
    e = explain(model, x)
    assert e.relevance.shape == x.shape and e.relevance.dtype == x.dtype
    assert e.logits.shape == (4, 3) and e.probs.shape == (4, 3)
    assert torch.equal(e.target, e.logits.argmax(1))
    assert torch.allclose(e.output_relevance, e.probs.gather(1, e.target[:, None])[:, 0])
    for field in (e.output_relevance, e.relevance_sum, e.conservation_error, e.absorbed):
        assert field.shape == (4,)
    assert torch.allclose(e.relevance_sum, e.relevance.flatten(1).sum(1))
    with torch.no_grad():
        assert torch.allclose(e.logits, model(x), atol=1e-5)


def test_model_is_left_exactly_as_it_was() -> None:
    model = _cnn().train()
    model[4].eval()
    calls = []
    model[0].register_forward_hook(lambda *a: calls.append("hook"))
    before = copy.deepcopy(model.state_dict())
    flags = [m.training for m in model.modules()]
    hooks = [(dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._backward_hooks)) for m in model.modules()]
    e = explain(model, torch.randn(2, 1, 16, 16))
    assert torch.isfinite(e.relevance).all()
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats untouched too
    assert [m.training for m in model.modules()] == flags
    assert [(dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._backward_hooks))
            for m in model.modules()] == hooks
    assert calls == []  # the user's hooks are not fired
    assert all(p.grad is None for p in model.parameters())


def test_training_mode_model_is_explained_as_in_eval_mode() -> None:
    model = _cnn()
    x = torch.randn(3, 1, 16, 16)
    a = explain(model.train(), x).relevance
    b = explain(model.eval(), x).relevance
    assert torch.equal(a, b)


def test_sample_result_does_not_depend_on_its_batch() -> None:
    model = _cnn().eval().double()
    x = torch.randn(5, 1, 16, 16, dtype=torch.float64)
    whole = explain(model, x, rule="epsilon-gamma-box")
    for i in (0, 3):
        alone = explain(model, x[i:i + 1], rule="epsilon-gamma-box")
        assert torch.allclose(whole.relevance[i:i + 1], alone.relevance, rtol=1e-10, atol=1e-14)
        assert torch.allclose(whole.absorbed[i], alone.absorbed[0], atol=1e-12)


def test_float32_and_float64_agree() -> None:
    model = _cnn().eval()
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    e32 = explain(model, x.float())
    e64 = explain(copy.deepcopy(model).double(), x)
    assert e64.relevance.dtype == torch.float64
    assert torch.allclose(e32.relevance.double(), e64.relevance, atol=1e-5 * e64.relevance.abs().max().item())


def test_float64_input_works_with_float32_model() -> None:
    e = explain(_cnn().eval(), torch.randn(1, 1, 16, 16, dtype=torch.float64))
    assert e.relevance.dtype == torch.float64


def test_targets_by_index_name_tensor_and_list() -> None:
    model = _cnn().eval()
    x = torch.randn(3, 1, 16, 16)
    names = ["glioma", "meningioma", "none"]
    by_index = explain(model, x, target=1)
    by_name = explain(model, x, target="meningioma", class_names=names)
    by_text_index = explain(model, x, target="1")
    assert torch.equal(by_index.target, torch.tensor([1, 1, 1]))
    assert torch.equal(by_index.relevance, by_name.relevance)
    assert torch.equal(by_index.relevance, by_text_index.relevance)
    per_sample = explain(model, x, target=torch.tensor([2, 0, 1]))
    assert torch.equal(per_sample.target, torch.tensor([2, 0, 1]))
    assert torch.equal(explain(model, x, target=[2, 0, 1]).relevance, per_sample.relevance)
    assert torch.allclose(per_sample.relevance[1], explain(model, x[1:2], target=0).relevance[0], atol=1e-7)


@pytest.mark.parametrize("target", [3, -1, "tumour", [0, 1, 2], torch.tensor([[0, 1, 2]])])
def test_bad_targets_are_settings_errors(target: object) -> None:
    with pytest.raises(SettingsError):
        explain(_cnn().eval(), torch.randn(2, 1, 16, 16), target=target, class_names=["a", "b", "c"])


def test_target_all_explains_every_class_in_one_pass() -> None:
    model = _cnn().eval()
    x = torch.randn(2, 1, 16, 16)
    e = explain(model, x, target="all")
    assert e.relevance.shape == (2, 3, 1, 16, 16)
    assert e.target.tolist() == [[0, 1, 2], [0, 1, 2]]
    assert e.output_relevance.shape == (2, 3) and e.logits.shape == (2, 3)
    assert torch.allclose(e.output_relevance.sum(1), torch.ones(2))  # the class probabilities
    for k in range(3):
        single = explain(model, x, target=k)
        assert torch.allclose(e.relevance[:, k], single.relevance, atol=1e-6)
        assert torch.allclose(e.conservation_error[:, k], single.conservation_error, atol=1e-6)


def test_init_modes_start_from_probability_logit_and_softmax_gradient() -> None:
    model = _cnn().eval()
    x = torch.randn(2, 1, 16, 16)
    prob = explain(model, x, init="prob")
    logit = explain(model, x, init="logit")
    sg = explain(model, x, init="sglrp")
    t = prob.target[:, None]
    assert torch.allclose(prob.output_relevance, prob.probs.gather(1, t)[:, 0])
    assert torch.allclose(logit.output_relevance, logit.logits.gather(1, t)[:, 0])
    assert torch.allclose(sg.output_relevance, torch.zeros(2), atol=1e-6)  # SGLRP's output relevance sums to 0
    assert torch.all(sg.conservation_error < 1e-3)
    with pytest.raises(SettingsError):
        explain(model, x, init="softmax")


@pytest.mark.parametrize("softmax", [nn.Softmax(dim=1), nn.LogSoftmax(dim=1)])
def test_trailing_softmax_is_stripped(softmax: nn.Module) -> None:
    x = torch.randn(2, 1, 16, 16)
    plain = explain(_cnn().eval(), x)
    with_softmax = explain(_cnn(softmax).eval(), x)
    assert torch.equal(plain.relevance, with_softmax.relevance)
    assert torch.equal(plain.logits, with_softmax.logits)


def test_trailing_functional_softmax_is_stripped() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = _cnn()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.softmax(self.body(x), dim=1)

    net = Net().eval()
    x = torch.randn(2, 1, 16, 16)
    assert torch.equal(explain(net, x).relevance, explain(net.body, x).relevance)


def test_alpha_minus_beta_not_one_warns_and_scales_relevance() -> None:
    model = _cnn().eval().double()
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    with pytest.warns(UserWarning, match="alpha - beta != 1"):
        e = explain(model, x, alpha=3.0, beta=1.0)
    assert torch.all(e.conservation_error > 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        explain(model, x, alpha=2.0, beta=1.0)


class Squared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.fc((y * y).mean((2, 3)))


class WithLstm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 4, 3)
        self.rnn = nn.LSTM(6, 4, batch_first=True)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.rnn(self.conv(x))[0][:, -1])


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.fc(x)
        return self.fc(-x)


@pytest.mark.parametrize(("model", "shape", "op", "layer"), [
    (Squared(), (1, 1, 8, 8), "mul", "mul"),
    (WithLstm(), (1, 1, 8), "LSTM", "rnn"),
    (Branchy(), (1, 4), "Branchy", "Branchy"),
    (nn.Sequential(nn.Linear(4, 4), nn.LogSoftmax(dim=1), nn.Linear(4, 2)), (1, 4), "LogSoftmax", "1"),
])
def test_unsupported_operation_raises_naming_op_and_layer(model: nn.Module, shape: tuple, op: str,
                                                          layer: str) -> None:
    with pytest.raises(UnsupportedLayerError) as info:
        explain(model, torch.randn(*shape))
    assert info.value.op == op and info.value.layer == layer
    assert layer in str(info.value)


def test_gating_product_of_two_tensors_is_refused_with_reason() -> None:
    class Product(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.a(x) * self.b(x))

    with pytest.raises(UnsupportedLayerError, match="two input-dependent tensors") as info:
        Explainer(Product())
    assert info.value.op == "mul"


def test_batchnorm_without_running_statistics_is_refused() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.BatchNorm2d(2, track_running_stats=False),
                          nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(UnsupportedLayerError, match="batch statistics"):
        Explainer(model)


def test_functional_ops_and_reused_modules_are_supported() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1, bias=False)
            self.stem = nn.Conv2d(1, 2, 5, padding=2, bias=False)
            self.fc = nn.Linear(8, 2, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.relu(self.stem(x), inplace=True)
            y = self.conv(x).relu_()
            y = self.conv(y)  # the same module twice
            z = torch.add(x, y)
            z = F.max_pool2d(z, 2)
            a, b = torch.split(z, 1, dim=1)
            z = torch.cat([b, a], dim=1).permute(0, 2, 3, 1).contiguous()
            z = F.adaptive_avg_pool2d(z.permute(0, 3, 1, 2), 2)
            return self.fc(z.reshape(z.shape[0], -1))

    torch.manual_seed(3)
    net = Net().double()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    e = explain(net, x, rule="zero")  # bias-free LRP-0 conserves up to the residual add's epsilon
    with torch.no_grad():
        assert torch.allclose(e.logits, net(x))
    assert torch.all(e.conservation_error < 1e-3)
    assert torch.allclose(e.output_relevance - e.relevance_sum, e.absorbed, atol=1e-12)


def test_input_validation_errors_are_typed() -> None:
    with pytest.raises(SettingsError):
        explain(_cnn().eval(), torch.ones(2, 1, 16, 16, dtype=torch.long))
    with pytest.raises(SettingsError, match="unknown LRP rule"):
        explain(_cnn().eval(), torch.randn(1, 1, 16, 16), rule="magic")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_result_matches_cpu() -> None:
    model = _cnn().eval()
    x = torch.randn(2, 1, 16, 16)
    cpu = explain(model, x, rule="epsilon-gamma-box")
    gpu = explain(copy.deepcopy(model).cuda(), x.cuda(), rule="epsilon-gamma-box")
    assert gpu.relevance.device.type == "cuda" and gpu.absorbed.device.type == "cuda"
    assert torch.allclose(gpu.relevance.cpu(), cpu.relevance, atol=1e-5 * cpu.relevance.abs().max().item())


def test_logits_match_the_model_without_its_trailing_softmax() -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(2 * 6 * 6, 3), torch.nn.Softmax(dim=1)).eval()
    x = torch.randn(2, 1, 8, 8)
    scores = Explainer(net, rule="epsilon").logits(x)
    torch.testing.assert_close(torch.softmax(scores, dim=1), net(x))
