"""Tracing that does not give up: einops, modules built inside forward, shape unpacking, attention in its three
spellings, MONAI's ViT and shortcut-A ResNet explained end to end; and one clear message when it does give up."""

from __future__ import annotations

import einops
import pytest
import torch
import torch.nn.functional as F
from einops.layers.torch import Rearrange, Reduce
from torch import nn

from mri_lrp.errors import SettingsError, UnsupportedLayerError
from mri_lrp.lrp import Explainer, explain

monai_nets = pytest.importorskip("monai.networks.nets")

RULES = [{"rule": "alphabeta", "alpha": 2.0, "beta": 1.0}, {"rule": "epsilon"}, {"composite": "epsilon-plus"}]


def _check(model: nn.Module, x: torch.Tensor, **kwargs) -> None:
    """Explains with finite relevance, the network's own logits, and every loss of relevance accounted for."""
    explainer = Explainer(model, **kwargs)
    with torch.no_grad():
        torch.testing.assert_close(explainer.logits(x), model(x), rtol=1e-4, atol=1e-5)
    e = explainer(x)
    assert torch.isfinite(e.relevance).all()
    assert e.relevance.abs().sum() > 0
    unexplained = (e.output_relevance - e.relevance_sum - e.absorbed).abs() / e.output_relevance_abs
    assert unexplained.max() <= 1e-3, unexplained


class Logits(nn.Module):
    """What the error message tells users of MONAI's ViT to do: return the logits only."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[0]


def _vit() -> nn.Module:
    return monai_nets.ViT(in_channels=1, img_size=32, patch_size=8, hidden_size=96, mlp_dim=192, num_layers=2,
                          num_heads=4, classification=True, num_classes=3, spatial_dims=3)


@pytest.mark.parametrize("rules", RULES, ids=["alphabeta", "epsilon", "composite"])
def test_monai_vit_explains_with_every_rule(rules: dict) -> None:
    torch.manual_seed(0)
    _check(Logits(_vit()).eval(), torch.randn(2, 1, 32, 32, 32), **rules)


def test_monai_vit_describes_attention_and_rearrange() -> None:
    rows = Explainer(Logits(_vit()).eval()).describe()
    kinds = {(t, text.split(":")[0]) for _, t, text in rows}
    assert ("Rearrange", "routing") in kinds
    assert ("softmax", "AttnLRP softmax") in kinds
    assert ("einsum", "uniform rule") in kinds


def test_monai_vit_returning_logits_and_hidden_states_explains_its_logits_unasked() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 1, 32, 32, 32)
    vit = _vit().eval()
    explainer = Explainer(vit)
    assert explainer.output_choice.startswith("element 0 of a tuple of 2 values (picked unasked")
    assert explainer.describe()[-1] == ("output", "output", f"explained: {explainer.output_choice}")
    wrapped = Explainer(Logits(vit))(x)
    assert torch.equal(explainer(x).relevance, wrapped.relevance)
    with pytest.raises(UnsupportedLayerError, match=r"element 1 of a tuple of 2 values, is a list, not a tensor"):
        Explainer(vit, model_output=1)


class Heads(nn.Module):
    """A classifier whose forward returns a dict: features and logits (no biases, so LRP-ε conserves)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.fc = nn.Linear(4, 3, bias=False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = F.relu(self.conv(x)).mean((2, 3))
        return {"features": features, "logits": self.fc(features)}


def test_dict_output_explains_the_key_model_output_names_and_refuses_to_guess() -> None:
    torch.manual_seed(0)
    model = Heads().eval()
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(UnsupportedLayerError, match=r"returns a dict \(keys features, logits\).*model_output"):
        Explainer(model)
    e = explain(model, x, rule="epsilon", model_output="logits")
    torch.testing.assert_close(e.logits, model(x)["logits"])
    assert e.conservation_error.max() <= 1e-4
    with pytest.raises(SettingsError, match=r"model_output 'scores': no such key; .*keys features, logits"):
        Explainer(model, model_output="scores")


def test_model_output_for_a_model_with_one_output_is_refused() -> None:
    with pytest.raises(SettingsError, match=r"forward returns one value.*leave model_output unset"):
        Explainer(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), model_output=0)


def _bn_stats(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("rules", RULES, ids=["alphabeta", "epsilon", "composite"])
def test_monai_resnet_with_shortcut_a_explains(rules: dict) -> None:
    """Its shortcut builds a pooling layer inside forward and unpacks `*out.shape[2:]`."""
    torch.manual_seed(1)
    net = monai_nets.ResNet("basic", [1, 1, 1, 1], [4, 8, 16, 32], spatial_dims=3, n_input_channels=1,
                            num_classes=2, shortcut_type="A", conv1_t_size=3)
    _check(_bn_stats(net).eval(), torch.randn(2, 1, 16, 16, 16), **rules)


class EinopsNet(nn.Module):
    """Patches by einops layers and functions, pooled by an einops Reduce."""

    def __init__(self) -> None:
        super().__init__()
        self.patches = Rearrange("b c (h p) (w q) -> b (h w) (p q c)", p=4, q=4)
        self.embed = nn.Linear(16, 8)
        self.pool = Reduce("b n d -> b d", "mean")
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.relu(self.embed(self.patches(x)))
        t = einops.rearrange(t, "b n d -> b d n")
        t = einops.rearrange(t, "b d n -> b n d")
        return self.head(self.pool(t))


@pytest.mark.parametrize("rules", RULES, ids=["alphabeta", "epsilon", "composite"])
def test_einops_layers_and_functions_trace_as_single_calls(rules: dict) -> None:
    torch.manual_seed(2)
    _check(EinopsNet().eval(), torch.randn(2, 1, 16, 16), **rules)


class BuiltInForward(nn.Module):
    """A pooling module created on every call, `.data` and `.detach()` on the way (all plain values)."""

    def __init__(self, plain: bool = False) -> None:
        super().__init__()
        self.plain = plain
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.head = nn.Linear(4 * 5 * 4, 2)
        self.register_buffer("row", torch.zeros(1, 4, 1, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.relu(self.conv(x))
        if self.plain:  # the same network written without any of the above
            t = self.pool(t)
            return self.head(torch.cat([t, self.row.expand_as(t[:, :, :1])], 2).flatten(1))
        t = nn.AvgPool2d(2)(t).data
        pad = torch.zeros(t.size(0), t.size(1), 1, *t.shape[3:], dtype=t.dtype, device=t.device)
        t = torch.cat([t.detach(), pad], 2)
        return self.head(t.flatten(1))


def test_modules_built_inside_forward_and_detached_values_carry_relevance() -> None:
    torch.manual_seed(3)
    model = BuiltInForward().eval()
    plain = BuiltInForward(plain=True).eval()
    plain.load_state_dict(model.state_dict())
    x = torch.randn(2, 1, 8, 8)
    _check(model, x, rule="epsilon")
    torch.testing.assert_close(Explainer(model).logits(x), plain(x))
    torch.testing.assert_close(Explainer(model)(x).relevance, Explainer(plain)(x).relevance)


class Branchy(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.sum() > 0 else -x


class WithBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(1, 2, 3), Branchy())
        self.head = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(x).mean((2, 3)))


def test_untraceable_module_is_named_with_its_type_reason_and_remedy() -> None:
    with pytest.raises(UnsupportedLayerError) as info:
        Explainer(WithBranch().eval())
    err = info.value
    assert err.layer == "block.1" and err.op == "Branchy"
    assert "torch.fx cannot trace" in err.reason and "control flow" in err.reason
    assert "torch.where" in err.reason and "mri_lrp.lrp.kinds.register" in err.reason


class Attend(nn.Module):
    """Conv patches, one attention layer spelled three ways, mean-pooled tokens, a linear head."""

    def __init__(self, how: str, batch_first: bool = True) -> None:
        super().__init__()
        self.how, self.batch_first = how, batch_first
        self.patch = nn.Conv2d(1, 8, 4, stride=4)
        self.mha = nn.MultiheadAttention(8, 2, batch_first=batch_first)
        self.qkv = nn.Linear(8, 24)
        self.proj = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)  # (B, N, 8)
        if self.how == "module":
            s = t if self.batch_first else t.transpose(0, 1)
            a, _ = self.mha(s, s, s, need_weights=False)
            a = a if self.batch_first else a.transpose(0, 1)
        else:
            b, n, _ = t.shape
            q, k, v = self.qkv(t).reshape(b, n, 3, 2, 4).permute(2, 0, 3, 1, 4).unbind(0)
            if self.how == "sdpa":
                a = F.scaled_dot_product_attention(q, k, v)
            else:
                w = (q * 0.5) @ k.transpose(-2, -1)
                a = w.softmax(dim=-1) @ v
            a = self.proj(a.transpose(1, 2).reshape(b, n, 8))
        t = t + a
        return self.head(F.gelu(t).mean(1))


@pytest.mark.parametrize("how, batch_first", [("module", True), ("module", False), ("sdpa", True),
                                              ("explicit", True)])
@pytest.mark.parametrize("rules", RULES, ids=["alphabeta", "epsilon", "composite"])
def test_attention_in_each_spelling_explains(how: str, batch_first: bool, rules: dict) -> None:
    torch.manual_seed(4)
    _check(Attend(how, batch_first).eval(), torch.randn(2, 1, 16, 16), **rules)


def test_multihead_attention_projections_get_their_own_rules() -> None:
    rows = Explainer(Attend("module").eval(), composite="epsilon-plus").describe()
    layers = {name: text for name, _, text in rows}
    for part in ("q_proj", "k_proj", "v_proj", "out_proj"):
        assert layers[f"mha.{part}"].startswith("epsilon")
    assert layers["patch"].startswith("zplus")


class UsesWeights(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(4, 1, batch_first=True)
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, weights = self.mha(x, x, x)
        return self.head(weights.mean(1))


def test_multihead_attention_weights_used_downstream_are_refused() -> None:
    with pytest.raises(UnsupportedLayerError, match="attention weights are used downstream.*need_weights=False"):
        Explainer(UsesWeights().eval())
