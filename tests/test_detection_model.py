"""The Mask R-CNN detectors (normbench.models.detection), frozen BN, and emulated GPUs in
detection (normbench.train.emulate) against separate forwards and against real processes."""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.ops import Conv2dNormActivation, FrozenBatchNorm2d

from normbench.errors import UserError
from normbench.models import build_model
from normbench.models.detection import build_detector, list_detectors, load_backbone
from normbench.norms import BatchNorm2d, build_norm, set_emulated_gpus, sync_running_stats
from normbench.train.emulate import emulated_forward

SIZE = 32  # scenes of 32 px (the mini's default is 64): a quarter of the backbone's work
CLASSES = 11  # 10 categories + background
OPTIONS = {"bn": {}, "syncbn": {}, "frozen_bn": {}, "gn": {"groups": 8}}
LOSSES = {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
# Few proposals, and every anchor and RoI sampled: the samplers draw no random subset, so one
# GPU's losses do not depend on the random state another GPU's forward left behind.
EXACT = {
    "rpn_pre_nms_top_n_train": 100,
    "rpn_post_nms_top_n_train": 30,
    "rpn_batch_size_per_image": 10**6,
    "box_batch_size_per_image": 10**6,
}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: a second thread costs more than it gives (10x the CPU time on a busy
    machine, where the threads spin waiting for each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _detector(norm: str, seed: int = 0, **options) -> nn.Module:
    torch.manual_seed(seed)
    norm_options = {**OPTIONS.get(norm, {}), **options.pop("norm_options", {})}
    options = {"image_size": SIZE, **options}
    model = build_detector("maskrcnn_mini", norm, CLASSES, 1, norm_options, **options)
    return model.train()


def _scenes(n: int, seed: int = 0) -> tuple[list[torch.Tensor], list[dict]]:
    """``n`` grey scenes of 1-3 bright rectangles (8-16 px) with COCO-like targets."""
    gen = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for i in range(n):
        image = torch.rand(1, SIZE, SIZE, generator=gen) * 0.1
        boxes, masks = [], []
        for _ in range(1 + i % 3):
            w, h = (int(v) for v in torch.randint(8, 17, (2,), generator=gen))
            x, y = (
                int(torch.randint(0, SIZE - w, (1,), generator=gen)),
                int(torch.randint(0, SIZE - h, (1,), generator=gen)),
            )
            image[:, y : y + h, x : x + w] = 0.5 + 0.5 * torch.rand(1, generator=gen)
            mask = torch.zeros(SIZE, SIZE, dtype=torch.uint8)
            mask[y : y + h, x : x + w] = 1
            boxes.append([x, y, x + w, y + h])
            masks.append(mask)
        labels = torch.randint(1, CLASSES, (len(boxes),), generator=gen)
        images.append(image)
        targets.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32),
                "labels": labels,
                "masks": torch.stack(masks),
                "image_id": i,
            }
        )
    return images, targets


def _norms(module: nn.Module) -> Counter:
    """Norm layers in ``module`` by type name."""
    kinds = (nn.modules.batchnorm._NormBase, nn.GroupNorm, FrozenBatchNorm2d)
    return Counter(type(m).__name__ for m in module.modules() if isinstance(m, kinds))


def _parts(model: nn.Module) -> dict[str, nn.Module]:
    heads = model.roi_heads
    return {
        "body": model.backbone.body,
        "fpn": model.backbone.fpn,
        "box": heads.box_head,
        "mask": heads.mask_head,
    }


# ----------------------------------------------------------------------------- the models


def test_list_detectors_names_the_mini_and_the_papers_model():
    names = [name for name, _ in list_detectors()]
    assert names == ["maskrcnn_mini", "maskrcnn_r50_fpn"]
    with pytest.raises(UserError, match="unknown detector 'yolo' \\(allowed: maskrcnn_mini, "):
        build_detector("yolo")
    with pytest.raises(UserError, match="backbone='resnet9' is unknown \\(allowed: resnet8, "):
        build_detector("maskrcnn_mini", backbone="resnet9")


@pytest.mark.parametrize(
    ("norm", "kind"),
    [("bn", "BatchNorm2d"), ("syncbn", "SyncBatchNorm2d"), ("gn", "GroupNorm")],
)
def test_the_norm_sits_in_the_body_the_fpn_and_both_heads(norm, kind):
    model = _detector(norm)
    # ResNet-8: stem, 2 per block x 3, 2 projections; FPN: lateral + output conv on 2 levels;
    # box head: 2 convs (the fc has none); mask head: 2 convs.
    expected = {"body": 9, "fpn": 4, "box": 2, "mask": 2}
    assert {part: _norms(m) for part, m in _parts(model).items()} == {
        part: Counter({kind: n}) for part, n in expected.items()
    }
    convs = [m for m in model.roi_heads.box_head.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 2 and all(conv.bias is None for conv in convs)  # the norm's beta instead


def test_frozen_bn_is_frozen_in_the_body_and_the_fpn_and_heads_have_no_norm():
    """BN*: Detectron's frozen-BN baseline; a frozen BN from random init would be the identity."""
    parts = _parts(_detector("frozen_bn"))
    assert _norms(parts["body"]) == Counter({"FrozenBatchNorm2d": 9})
    for name in ("fpn", "box", "mask"):
        assert _norms(parts[name]) == Counter(), name
        convs = [m for m in parts[name].modules() if isinstance(m, nn.Conv2d)]
        assert convs and all(conv.bias is not None for conv in convs), name


@pytest.mark.parametrize("norm", ["gn", "frozen_bn"])
def test_the_papers_model_puts_its_norms_in_the_same_places(norm):
    with torch.device("meta"):  # structure only: no memory, no time
        model = build_detector("maskrcnn_r50_fpn", norm, num_classes=81)
    # ResNet-50: stem, 3 per bottleneck x 16, 4 projections; FPN: 2 per level x 4 levels;
    # 4conv1fc box head; 4-conv mask head.
    kind, heads = ("GroupNorm", 1) if norm == "gn" else ("FrozenBatchNorm2d", 0)
    counts = {part: sum(_norms(m).values()) for part, m in _parts(model).items()}
    assert counts == {"body": 53, "fpn": 8 * heads, "box": 4 * heads, "mask": 4 * heads}
    assert set(_norms(model)) == {kind}
    assert model.roi_heads.box_predictor.cls_score.out_features == 81
    assert model.transform.min_size == (800,) and model.transform.max_size == 1333


def test_the_mini_neither_resizes_nor_pads_its_scenes_and_normalizes_like_fashion_mnist():
    from normbench.data.fashion_mnist import MEAN, STD

    model = build_detector("maskrcnn_mini", "bn", CLASSES, 1).eval()  # 64 px by default
    image = torch.rand(1, 64, 64)
    batch, _ = model.transform([image])
    assert torch.equal(batch.tensors[0], (image - MEAN[0]) / STD[0])


def test_the_papers_model_takes_an_image_size_and_refuses_a_width():
    with torch.device("meta"):
        model = build_detector("maskrcnn_r50_fpn", "gn", image_size=128, in_channels=1)
        with pytest.raises(UserError, match="width=16 is not supported \\(ResNet-50 has fixed"):
            build_detector("maskrcnn_r50_fpn", "gn", width=16)
    assert (model.transform.min_size, model.transform.max_size) == ((128,), 128)
    assert model.backbone.body.conv1.in_channels == 1 and len(model.transform.image_mean) == 1


def test_norms_that_replace_the_activation_take_the_heads_relu_slot():
    box_head = _detector("frn").roi_heads.box_head
    blocks = [m for m in box_head if isinstance(m, Conv2dNormActivation)]
    assert [type(b[1]).__name__ for b in blocks] == ["FilterResponseNorm2d"] * 2
    assert all(b[1].tlu is not None and isinstance(b[2], nn.Identity) for b in blocks)


@pytest.mark.parametrize("norm", ["bn", "gn", "frozen_bn"])
def test_a_training_forward_gives_the_five_losses_and_trains(norm):
    model = _detector(norm)
    images, targets = _scenes(2)
    losses = model(images, targets)
    assert set(losses) == LOSSES
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    sum(losses.values()).backward()
    for part, module in _parts(model).items():
        grads = [p.grad for p in module.parameters()]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), part
    assert model.roi_heads.mask_predictor.mask_fcn_logits.weight.grad.abs().sum() > 0


def test_evaluation_gives_boxes_labels_scores_and_masks():
    model = _detector("gn", box_score_thresh=0.0).eval()
    images, _ = _scenes(2)
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for detections in out:
        assert set(detections) == {"boxes", "labels", "scores", "masks"}
        n = len(detections["boxes"])
        assert n > 0 and detections["boxes"].shape == (n, 4)
        assert detections["masks"].shape == (n, 1, SIZE, SIZE)
        assert ((detections["labels"] >= 1) & (detections["labels"] < CLASSES)).all()


# ----------------------------------------------------------------------------- frozen BN


def test_frozen_bn_is_a_bn_checkpoints_fixed_affine():
    bn = nn.BatchNorm2d(8)
    with torch.no_grad():
        for buffer in (bn.weight, bn.bias, bn.running_mean):
            buffer.normal_()
        bn.running_var.uniform_(0.5, 2)
    bn.num_batches_tracked.fill_(7)
    frozen = build_norm("frozen_bn", 8)
    frozen.load_state_dict(bn.state_dict())  # num_batches_tracked dropped
    assert list(frozen.parameters()) == []
    x = torch.randn(4, 8, 3, 3)
    expected = bn.eval()(x)
    torch.testing.assert_close(frozen.train()(x), expected)
    torch.testing.assert_close(frozen(x[:1]), expected[:1])  # batch-independent
    assert build_norm("frozen_bn", 8, eps=1e-3).eps == 1e-3


def test_norms_command_lists_frozen_bn(capsys, monkeypatch):
    from normbench.cli import main
    from normbench.track.environment import COMMAND_ENV

    monkeypatch.setenv(COMMAND_ENV, "")  # main() records its command there: restored after
    assert main(["norms"]) == 0
    shown = capsys.readouterr().out
    assert any(line.startswith("frozen_bn ") for line in shown.splitlines())
    assert "norm.eps: added to the running variance (default 1e-05)" in shown


def test_frozen_bn_trains_nothing_and_keeps_its_buffers():
    classifier = _classifier("bn")
    model = _detector("frozen_bn")
    load_backbone(model, classifier.state_dict())
    frozen = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in frozen]
    assert all(list(m.parameters()) == [] for m in frozen)
    torch.testing.assert_close(frozen[0].running_var, classifier.bn1.running_var)
    images, targets = _scenes(2)
    sum(model(images, targets).values()).backward()
    for module, saved in zip(frozen, before, strict=True):
        for name, value in module.state_dict().items():
            assert torch.equal(value, saved[name]), name
    assert model.backbone.body.conv1.weight.grad.abs().sum() > 0  # the convs still train


# ----------------------------------------------------------------------------- pretrained body


def _classifier(norm: str) -> nn.Module:
    """A resnet8 classifier as the classification runs build it, with running statistics and
    weights that differ from a fresh detector's."""
    torch.manual_seed(1)
    model = build_model(
        "resnet8", norm, num_classes=10, in_channels=1, width=16, norm_options=OPTIONS[norm]
    )
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if value.is_floating_point():
                value.add_(torch.rand_like(value) if "var" in name else torch.randn_like(value))
    return model


@pytest.mark.parametrize(
    ("trained", "detector"), [("bn", "bn"), ("bn", "frozen_bn"), ("bn", "syncbn"), ("gn", "gn")]
)
def test_a_classification_checkpoint_loads_into_the_body(trained, detector):
    classifier = _classifier(trained)
    model = _detector(detector)
    load_backbone(model, classifier.state_dict())
    body = model.backbone.body
    loaded = body.state_dict()
    for key, value in classifier.state_dict().items():
        if key.startswith("fc."):
            assert key not in loaded
        elif key in loaded:
            assert torch.equal(loaded[key], value), key
        else:
            assert detector == "frozen_bn" and key.endswith("num_batches_tracked"), key
    assert torch.equal(body.layer3[0].conv2.weight, classifier.layer3[0].conv2.weight)
    if detector == "bn":  # the other-mode chain restarts from the loaded statistics
        assert torch.equal(body.bn1.alt_running_var, classifier.bn1.running_var)


@pytest.mark.parametrize(
    ("trained", "detector", "message"),
    [
        ("gn", "bn", "missing bn1.num_batches_tracked, bn1.running_mean, bn1.running_var (+"),
        ("bn", "gn", "unexpected bn1.num_batches_tracked, bn1.running_mean, bn1.running_var (+"),
    ],
)
def test_a_checkpoint_of_another_norm_is_refused_in_one_line(trained, detector, message):
    model = _detector(detector)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(UserError) as info:
        load_backbone(model, _classifier(trained).state_dict())
    text = str(info.value)
    assert "\n" not in text and message in text
    assert "allowed: a classification checkpoint of the same network and norm" in text
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched


def test_a_checkpoint_of_another_width_is_refused():
    model = _detector("bn", width=8)
    with pytest.raises(UserError, match="other shape bn1.bias, bn1.running_mean, bn1.running_var"):
        load_backbone(model, _classifier("bn").state_dict())


# ----------------------------------------------------------------------------- emulated GPUs


def _by_hand(model: nn.Module, images, targets, gpus: int, steps: int):
    """``gpus`` copies of ``model``, GPU j training on images j, j + gpus, ... for ``steps``
    forwards (no optimizer step): the copies, each step's mean losses, and the mean gradients."""
    copies = [copy.deepcopy(model) for _ in range(gpus)]
    for gpu in copies:
        set_emulated_gpus(gpu, 1)
    torch.manual_seed(5)
    history = []
    for _ in range(steps):
        per_gpu = [m(images[j::gpus], targets[j::gpus]) for j, m in enumerate(copies)]
        history.append({k: sum(l[k] for l in per_gpu) / gpus for k in per_gpu[0]})
        for losses in per_gpu:
            sum(losses.values()).backward()
    grads = {
        name: sum(dict(m.named_parameters())[name].grad for m in copies) / gpus
        for name, _ in model.named_parameters()
    }
    return copies, history, grads


def _emulated(model: nn.Module, images, targets, gpus: int, steps: int):
    set_emulated_gpus(model, gpus)
    torch.manual_seed(5)
    history = []
    for _ in range(steps):
        losses = emulated_forward(model, images, targets, gpus)
        history.append(losses)
        sum(losses.values()).backward()
    return history, {name: p.grad for name, p in model.named_parameters()}


def _combined(copies: list[nn.Module], name: str, mode: str) -> torch.Tensor:
    """Buffer ``name`` of the copies combined as mode says (sync_running_stats' rule)."""
    values = [dict(m.named_buffers())[name] for m in copies]
    return torch.stack(values).mean(0) if mode == "average" else values[0]


@pytest.mark.parametrize(
    ("norm", "norm_options"),
    [
        ("bn", {"eval_stats": "first"}),
        ("bn", {"eval_stats": "average"}),
        ("evonorm_b0", {"eval_stats": "average"}),
        ("iternorm", {"eval_stats": "first"}),
        ("gn", {}),
    ],
)
def test_emulated_gpus_are_separate_forwards_on_their_images(norm, norm_options):
    """Two emulated GPUs of 2 images over two steps: the same losses, gradients and moving
    averages (both modes of BN) as two copies of the model, one per GPU's images."""
    model = _detector(norm, norm_options=norm_options, **EXACT)
    images, targets = _scenes(4)
    copies, hand_losses, hand_grads = _by_hand(model, images, targets, gpus=2, steps=2)
    losses, grads = _emulated(model, images, targets, gpus=2, steps=2)
    for step, (ours, theirs) in enumerate(zip(losses, hand_losses, strict=True)):
        assert ours.keys() == theirs.keys() == LOSSES
        for key in LOSSES:
            torch.testing.assert_close(ours[key], theirs[key], msg=f"step {step}: {key}")
    for name, grad in grads.items():
        torch.testing.assert_close(grad, hand_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    mode = norm_options.get("eval_stats", "first")
    checked = 0  # moving averages compared
    for module_name, module in model.named_modules():
        for stat in getattr(module, "running_stats", ()):
            if getattr(module, stat) is None:  # EvoNorm-B0 without its nonlinearity: none
                continue
            name = f"{module_name}.{stat}"
            torch.testing.assert_close(getattr(module, stat), _combined(copies, name, mode))
            checked += 1
        if isinstance(module, BatchNorm2d):  # the other mode, as sync_running_stats makes it
            other = "average" if mode == "first" else "first"
            for stat in ("mean", "var"):
                expected = _combined(copies, f"{module_name}.running_{stat}", other)
                torch.testing.assert_close(getattr(module, f"alt_running_{stat}"), expected)
            assert module.num_batches_tracked == 2 and module.chunks == 2
    # bn, iternorm: a mean and a variance (or covariance) in each of 17 layers; EvoNorm-B0 a
    # variance where it carries its nonlinearity (8 layers); GN none.
    assert checked == {"bn": 34, "iternorm": 34, "evonorm_b0": 8, "gn": 0}[norm]
    if norm == "gn":  # why batch-independent norms run per GPU too: losses are per GPU
        model.zero_grad()
        pooled = model(images, targets)
        assert not torch.allclose(pooled["loss_mask"], losses[-1]["loss_mask"])


def test_synchronized_bn_runs_one_forward_over_every_gpus_images():
    model = _detector("syncbn", **EXACT)
    images, targets = _scenes(4)
    reference = copy.deepcopy(model)
    losses = emulated_forward(model, images, targets, 2)
    expected = reference(images, targets)
    for key in LOSSES:
        torch.testing.assert_close(losses[key], expected[key])
    torch.testing.assert_close(
        model.backbone.body.bn1.running_var, reference.backbone.body.bn1.running_var
    )


def test_batch_renorm_is_refused_and_the_gpu_count_must_match_the_norms():
    model = _detector("brn")
    images, targets = _scenes(2)
    with pytest.raises(ValueError, match="set_emulated_gpus\\(model, 2\\) first"):
        emulated_forward(model, images, targets, 2)
    set_emulated_gpus(model, 2)
    with pytest.raises(UserError) as info:
        emulated_forward(model, images, targets, 2)
    assert "\n" not in str(info.value) and "allowed: devices=gpus" in str(info.value)
    with pytest.raises(ValueError, match="3 images and 2 targets"):
        emulated_forward(model, images + images[:1], targets, 2)


# ----------------------------------------------------------------------------- real processes

REAL_MODES = ("first", "average")
PER_PROCESS = (1, 2)  # GPUs each of the two processes holds (emulates when more than one)


def _real_gpu_worker(out_dir: str) -> None:
    """One of two gloo processes under DDP, holding 1 or 2 GPUs of 1 image each: one training
    forward + backward (DDP averages the gradients), the losses averaged over the processes,
    the moving averages combined (sync_running_stats); rank 0 saves them."""
    import os

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        saved = {}
        for per_process in PER_PROCESS:
            images, targets = _scenes(world * per_process)
            for mode in REAL_MODES:
                model = _detector("bn", norm_options={"eval_stats": mode}, **EXACT)
                set_emulated_gpus(model, per_process)
                net = DistributedDataParallel(model, broadcast_buffers=False)
                # DistributedSampler's share: images rank, rank + world, ...
                mine = images[rank::world], targets[rank::world]
                losses = emulated_forward(net, *mine, per_process)
                sum(losses.values()).backward()
                values = torch.stack([losses[k] for k in sorted(LOSSES)]).detach()
                dist.all_reduce(values)
                sync_running_stats(model)
                saved[per_process, mode] = {
                    "losses": dict(zip(sorted(LOSSES), values / world, strict=True)),
                    "grads": {n: p.grad.clone() for n, p in model.named_parameters()},
                    "buffers": {n: b.clone() for n, b in model.named_buffers()},
                }
        if rank == 0:
            torch.save(saved, Path(out_dir, "real.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_real_processes_match_one_process_emulating_their_gpus(tmp_path):
    """2 processes of 1 GPU (per-GPU BN over real ranks), and 2 processes emulating 2 GPUs each,
    against one process emulating all their GPUs: the same losses, gradients and moving
    averages (both modes)."""
    from normbench.train.distributed import launch_workers

    launch_workers(_real_gpu_worker, str(tmp_path), nprocs=2, run_id="test-detection-gpus")
    real = torch.load(tmp_path / "real.pt")
    for per_process in PER_PROCESS:
        gpus = 2 * per_process
        images, targets = _scenes(gpus)
        for mode in REAL_MODES:
            theirs = real[per_process, mode]
            case = f"{per_process} GPU(s) per process, {mode}"
            model = _detector("bn", norm_options={"eval_stats": mode}, **EXACT)
            set_emulated_gpus(model, gpus)
            losses = emulated_forward(model, images, targets, gpus)
            sum(losses.values()).backward()
            for key in LOSSES:
                torch.testing.assert_close(losses[key], theirs["losses"][key], msg=case)
            for name, p in model.named_parameters():
                expected = theirs["grads"][name]
                torch.testing.assert_close(
                    p.grad, expected, rtol=1e-4, atol=1e-6, msg=f"{case}: {name}"
                )
            buffers = dict(model.named_buffers())
            assert any(name.endswith("alt_running_var") for name in theirs["buffers"])
            for name, value in theirs["buffers"].items():
                if name.endswith("num_batches_tracked"):
                    assert buffers[name] == value == 1, name
                else:
                    torch.testing.assert_close(buffers[name], value, msg=f"{case}: {name}")
