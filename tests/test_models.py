"""Tests of the model builders: every model x norm, initialisation, FRN placement, WS, errors."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from normbench.errors import UserError
from normbench.models import build_model, list_models
from normbench.models.resnet import RESIDUAL_BLOCKS, BasicBlock, Bottleneck, NormFactory
from normbench.norms import build_norm, get_norm_spec, list_norms
from normbench.norms.frn import TLU
from normbench.norms.ws import WSConv2d

CIFAR = ["resnet8", "resnet14", "resnet20", "resnet32", "resnet56"]
TORCHVISION = ["resnet18", "resnet34", "resnet50", "resnet101"]
NORMS = [spec.name for spec in list_norms()]
# Real forward/backward with every norm on one model per block type and family; resnet34/101
# only repeat resnet18/50's blocks, so they train with BN and are built (on meta) with the rest.
TRAINED_WITH_EVERY_NORM = [*CIFAR, "resnet18", "resnet50"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny inputs: thread start-up and contention cost more than they give on shared cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _input(model_name: str, in_channels: int = 3) -> torch.Tensor:
    # torchvision ResNets downsample 32x: 64 px leaves 2x2 maps, enough for per-instance norms.
    # The CIFAR-style ones take anything from 8 px.
    size = 64 if model_name in TORCHVISION else 8
    return torch.randn(2, in_channels, size, size)


def _norm_options(model_name: str, norm: str) -> dict | None:
    # GN's (and EvoNorm-S0's) default 32 groups do not divide the CIFAR models' 16-channel layers.
    return {"groups": 8} if norm in ("gn", "evonorm_s0") and model_name in CIFAR else None


def _block_out_channels(block: nn.Module) -> int:
    return (block.conv3 if isinstance(block, Bottleneck) else block.conv2).out_channels


def _activation_slots(model: nn.Module) -> list[tuple[str, nn.Module, int]]:
    """(name, module, channels it follows) for the stem's and every block's activation slot."""
    slots = [("relu", model.relu, model.conv1.out_channels)]
    for name, block in model.named_modules():
        if isinstance(block, RESIDUAL_BLOCKS):
            inner = block.conv1.out_channels
            slots.append((f"{name}.act1", block.act1, inner))
            if isinstance(block, Bottleneck):
                slots.append((f"{name}.act2", block.act2, inner))
            slots.append((f"{name}.act_out", block.act_out, _block_out_channels(block)))
    return slots


def test_blocks_are_torchvision_drop_ins() -> None:
    # Without our factory the blocks behave like torchvision's: BatchNorm2d and ReLU.
    model = torchvision.models.resnet.ResNet(BasicBlock, [1, 1, 1, 1], num_classes=3)
    assert isinstance(model.layer1[0].act1, nn.ReLU)
    assert model(_input("resnet18")).shape == (2, 3)


def test_list_models_names_every_contract_model() -> None:
    models = dict(list_models())
    assert set(models) == set(CIFAR + TORCHVISION)
    assert all(description.strip() for description in models.values())


def _norm_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Module name -> every norm layer (the non-conv, non-linear modules with a weight, learned
    or, as frozen BN's, a buffer)."""
    return {
        name: module
        for name, module in model.named_modules()
        if not isinstance(module, (nn.Conv2d, nn.Linear))
        and isinstance(getattr(module, "weight", None), torch.Tensor)
    }


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("model_name", CIFAR + TORCHVISION)
def test_every_model_builds_with_every_norm(model_name: str, norm: str) -> None:
    options = _norm_options(model_name, norm)
    with torch.device("meta"):  # construction and init only: no memory, no compute
        model = build_model(model_name, norm=norm, num_classes=5, norm_options=options)
        expected = type(build_norm(norm, 64, **(options or {})))
    assert model.fc.out_features == 5
    blocks = [m for m in model.modules() if isinstance(m, RESIDUAL_BLOCKS)]
    expected_count = 1 + sum(  # the stem's norm, then each block's and its shortcut's
        (3 if isinstance(b, Bottleneck) else 2) + (b.downsample is not None) for b in blocks
    )
    layers = _norm_layers(model)
    assert len(layers) == expected_count
    assert {type(layer) for layer in layers.values()} == {expected}


def _train_step(model_name: str, norm: str) -> None:
    model = build_model(
        model_name, norm=norm, num_classes=5, norm_options=_norm_options(model_name, norm)
    )
    out = model(_input(model_name))
    assert out.shape == (2, 5)
    out.square().mean().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("model_name", TRAINED_WITH_EVERY_NORM)
def test_forward_backward_with_every_norm(model_name: str, norm: str) -> None:
    _train_step(model_name, norm)


@pytest.mark.parametrize("model_name", ["resnet34", "resnet101"])
def test_forward_backward_deeper_torchvision_models(model_name: str) -> None:
    _train_step(model_name, "bn")


def _norm_gammas(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: layer.weight for name, layer in _norm_layers(model).items()}


def _last_norm_names(model: nn.Module) -> set[str]:
    return {
        f"{name}.{'bn3' if isinstance(block, Bottleneck) else 'bn2'}"
        for name, block in model.named_modules()
        if isinstance(block, RESIDUAL_BLOCKS)
    }


@pytest.mark.parametrize(
    ("model_name", "norm", "blocks"),
    [("resnet20", "bn", 9), ("resnet20", "frn", 9), ("resnet50", "gn", 16)],
)
def test_zero_init_zeroes_only_the_last_norm_of_each_block(
    model_name: str, norm: str, blocks: int
) -> None:
    model = build_model(model_name, norm=norm, norm_options=_norm_options(model_name, norm))
    gammas = _norm_gammas(model)
    last = _last_norm_names(model)
    assert len(last) == blocks
    assert last < set(gammas)
    for name, gamma in gammas.items():
        expected = 0.0 if name in last else 1.0
        assert torch.all(gamma == expected), name


def test_zero_init_can_be_turned_off() -> None:
    model = build_model("resnet20", zero_init_last_norm=False)
    assert all(torch.all(gamma == 1.0) for gamma in _norm_gammas(model).values())


def test_zero_init_leaves_frozen_bn_alone() -> None:
    """Frozen BN's gamma is a buffer: zeroing it would switch residual branches off for good."""
    model = build_model("resnet8", norm="frozen_bn")
    frozen = [m for m in model.modules() if type(m).__name__ == "FrozenBatchNorm2d"]
    assert frozen
    assert all(torch.all(m.weight == 1.0) for m in frozen)


def test_paper_init_of_convs_and_classifier() -> None:
    model = build_model("resnet50", num_classes=1000)
    assert model.fc.weight.std().item() == pytest.approx(0.01, rel=0.02)
    assert torch.all(model.fc.bias == 0)
    # He normal with fan_out: std = sqrt(2 / (out_channels * k * k)).
    conv = model.layer4[0].conv2
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert conv.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.02)


def _pairs(model: nn.Module) -> list[tuple[str, nn.Module, nn.Module]]:
    """(name, norm, activation) of every norm + activation position: stem and inside blocks."""
    pairs = [("stem", model.bn1, model.relu)]
    for name, block in model.named_modules():
        if isinstance(block, RESIDUAL_BLOCKS):
            pairs.append((f"{name}.bn1", block.bn1, block.act1))
            if isinstance(block, Bottleneck):
                pairs.append((f"{name}.bn2", block.bn2, block.act2))
    return pairs


def _unpaired_norms(model: nn.Module) -> list[nn.Module]:
    """The norms no activation follows: each block's last norm and the shortcuts' norms."""
    norms = []
    for block in model.modules():
        if isinstance(block, RESIDUAL_BLOCKS):
            norms.append(block.last_norm)
            if block.downsample is not None:
                norms.append(block.downsample[1])
    return norms


REPLACING = [spec.name for spec in list_norms() if spec.replaces_activation]


@pytest.mark.parametrize("norm", REPLACING)
@pytest.mark.parametrize("model_name", ["resnet20", "resnet50"])
def test_norms_that_replace_the_activation_carry_it_where_a_relu_stood(
    model_name: str, norm: str
) -> None:
    options = _norm_options(model_name, norm)
    with torch.device("meta"):
        model = build_model(model_name, norm=norm, norm_options=options)
    pairs = _pairs(model)
    for name, layer, activation in pairs:  # the norm + its nonlinearity, fused
        assert layer.act and isinstance(activation, nn.Identity), name
    assert not any(layer.act for layer in _unpaired_norms(model))  # before an addition: none
    after_addition = [b.act_out for b in model.modules() if isinstance(b, RESIDUAL_BLOCKS)]
    # FRN's activation is its TLU everywhere; EvoNorm's authors keep ReLU after the addition.
    expected = TLU if norm == "frn" else nn.ReLU
    assert all(type(a) is expected for a in after_addition)
    relus = sum(isinstance(m, nn.ReLU) for m in model.modules())
    assert relus == (0 if norm == "frn" else len(after_addition))


def test_frn_tlu_means_the_same_in_the_norm_and_in_the_model() -> None:
    # tlu=true: FRN's nonlinearity is TLU, fused after FRN and standalone after the addition.
    model = build_model("resnet20", norm="frn")
    assert all(isinstance(layer.tlu, TLU) for _, layer, _ in _pairs(model))
    assert all(isinstance(b.act_out, TLU) for b in model.modules() if isinstance(b, BasicBlock))
    # tlu=false: ReLU in both places (the FRN paper's "FRN without TLU"), and no TLU anywhere.
    model = build_model("resnet20", norm="frn", norm_options={"tlu": False})
    assert not any(isinstance(m, TLU) for m in model.modules())
    assert all(layer.act and layer.tlu is None for _, layer, _ in _pairs(model))
    x = torch.randn(2, 16, 4, 4)
    layer = _pairs(model)[0][1]
    torch.testing.assert_close(layer(x), build_norm("frn", 16, tlu=False, act=False)(x).relu())


@pytest.mark.parametrize("norm", [spec.name for spec in list_norms()])
def test_the_benchmarked_norm_activation_pair_is_what_the_model_trains(norm: str) -> None:
    # scripts/bench_norms.py times NormFactory.norm_act; the blocks are built from it too.
    options = _norm_options("resnet50", norm)
    with torch.device("meta"):
        model = build_model("resnet50", norm=norm, norm_options=options)
        timed, timed_act = NormFactory("resnet50", norm, options).norm_act(64)
    _, layer, activation = _pairs(model)[1]  # layer1[0].bn1: 64 channels
    assert type(layer) is type(timed) and repr(layer) == repr(timed)
    assert type(activation) is type(timed_act)
    assert get_norm_spec(norm).replaces_activation == isinstance(activation, nn.Identity)


@pytest.mark.parametrize("model_name", ["resnet20", "resnet18"])
def test_ws_standardizes_every_conv(model_name: str) -> None:
    model = build_model(model_name, norm="gn", ws=True, norm_options={"groups": 8})
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs
    assert all(isinstance(m, WSConv2d) for m in convs)
    assert model(_input(model_name)).shape == (2, 1000)


def test_resnet50_bn_matches_torchvision_parameters() -> None:
    ours = build_model("resnet50", norm="bn").state_dict()
    reference = torchvision.models.resnet50(weights=None).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in reference.items()}
    count = sum(p.numel() for p in build_model("resnet50").parameters())
    assert count == sum(p.numel() for p in torchvision.models.resnet50().parameters())


@pytest.mark.parametrize("model_name", ["resnet18", "resnet50"])
def test_bn_forward_matches_torchvision_with_same_weights(model_name: str) -> None:
    ours = build_model(model_name, norm="bn", num_classes=10)
    reference = getattr(torchvision.models, model_name)(weights=None, num_classes=10)
    reference.load_state_dict(ours.state_dict())
    x = _input(model_name)
    torch.testing.assert_close(ours.eval()(x), reference.eval()(x))


def test_unknown_model_names_the_allowed_ones() -> None:
    with pytest.raises(
        UserError, match=r"unknown model 'resnet7' \(allowed: resnet8, .*resnet101\)"
    ):
        build_model("resnet7")


@pytest.mark.parametrize("options", [None, {"groups": 32}])
def test_bad_groups_names_model_and_layer_width(options: dict | None) -> None:
    # GN's default is 32 groups; resnet20's first layers have 16 channels.
    with pytest.raises(UserError, match=r"^resnet20: gn: groups=32 does not divide 16 channels"):
        build_model("resnet20", norm="gn", norm_options=options)


@pytest.mark.parametrize("options", [{"groups": 32}, {"group_size": 16}])
def test_resnet50_gn_takes_groups_or_group_size(options: dict) -> None:
    model = build_model("resnet50", norm="gn", num_classes=1000, norm_options=options)
    stem_norm = model.bn1  # 64 channels: 32 groups of 2, or 4 groups of 16
    x = torch.randn(2, 64, 4, 4)
    expected = nn.functional.group_norm(x, 32 if "groups" in options else 4)
    torch.testing.assert_close(stem_norm(x), expected)


def test_in_channels_and_width() -> None:
    cifar = build_model("resnet20", num_classes=10, in_channels=1, width=8)
    assert cifar.fc.in_features == 32
    assert cifar(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    imagenet = build_model("resnet18", num_classes=10, in_channels=1)
    assert imagenet(_input("resnet18", in_channels=1)).shape == (2, 10)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "resnet50", "width": 32}, r"resnet50: width=32"),
        ({"name": "resnet20", "num_classes": 0}, r"resnet20: num_classes must be"),
        ({"name": "resnet20", "norm": "gnn"}, r"unknown norm 'gnn'"),
        ({"name": "resnet20", "norm": "frn", "norm_options": {"tlu": "no"}}, r"resnet20: frn: tlu"),
        ({"name": "resnet20", "norm_options": {"tlu": True}}, r"resnet20: norm 'bn' has no"),
    ],
)
def test_bad_arguments_raise_user_error(kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        build_model(**kwargs)
