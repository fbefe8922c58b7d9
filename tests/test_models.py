"""Models: the contract every registered model keeps, then what is particular to seed-cnn and the ResNet family."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from gzmorph import tree
from gzmorph.errors import GzmorphError
from gzmorph.models import create_model, get_spec, list_models
from gzmorph.models import resnet as resnet_module
from gzmorph.models.resnet import ResNet, keras_layer_names, keras_layer_plan, load_torchvision_weights


# --------------------------------------------------------------------------------------------------------------
# Every registered model (new families are covered as soon as they register)
# --------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list_models())
def test_registered_model_contract(name):
    spec = get_spec(name)
    assert 0 < spec.size <= spec.crop <= 424
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, spec.size, spec.size, generator=generator)
    target = torch.rand(2, 37, generator=generator)

    for head in (None, "tree"):  # None: the recipe's default head
        torch.manual_seed(0)
        model = create_model(name, head=head)
        model.train()
        out = model(x)
        assert out.shape == (2, 37)
        assert torch.isfinite(out).all()
        assert out.min() >= 0 and out.max() <= 1
        if head == "tree":
            assert not tree.tree_violations(out.detach().numpy(), tolerance=1e-4).any()

        ((out - target) ** 2).mean().backward()
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        assert trainable
        # One plain SGD step first: a residual branch whose last BN starts at zero (zero-init residual) passes no
        # gradient to its earlier layers until that BN has moved. After one step every parameter must learn.
        with torch.no_grad():
            for _, p in trainable:
                p -= 0.1 * p.grad
                p.grad = None
        ((model(x) - target) ** 2).mean().backward()
        for n, p in trainable:
            assert p.grad is not None, n
            assert torch.isfinite(p.grad).all(), n
            assert p.grad.abs().sum() > 0, n

        model.eval()
        with torch.no_grad():
            assert torch.equal(model(x), model(x))


# --------------------------------------------------------------------------------------------------------------
# seed-cnn
# --------------------------------------------------------------------------------------------------------------

def test_seed_cnn_parameter_count():
    # BN on the input:       3 gammas + 3 betas                       =       6  (running stats are buffers;
    #                                                                            Keras counts them: 532,337 there)
    # conv 3->128:    3*9*128 + 128 =   3,456 + 128                   =   3,584
    # conv 128->128: 128*9*128 + 128 = 147,456 + 128                  = 147,584
    # conv 128->64:  128*9*64 + 64  =  73,728 + 64                    =  73,792
    # conv 64->64:    64*9*64 + 64  =  36,864 + 64                    =  36,928
    # conv 64->32:    64*9*32 + 32  =  18,432 + 32                    =  18,464
    # conv 32->32:    32*9*32 + 32  =   9,216 + 32                    =   9,248
    # dense 800->256: 204,800 + 256                                   = 205,056
    # dense 256->128:  32,768 + 128                                   =  32,896
    # dense 128->37:    4,736 + 37                                    =   4,773
    #                                                          total  = 532,331
    model = create_model("seed-cnn")
    assert sum(p.numel() for p in model.parameters()) == 532_331


def test_seed_cnn_layers_and_flatten_size():
    net = create_model("seed-cnn")
    model = net.backbone  # the report's layers up to the last Dense; that Dense and the sigmoid are the head
    conv_block = [nn.Conv2d, nn.ReLU, nn.Conv2d, nn.ReLU, nn.MaxPool2d]
    expected = ([nn.BatchNorm2d] + conv_block * 3
                + [nn.Flatten, nn.Dropout, nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear])
    layers = [*model, net.head.linear, net.head.output]
    assert [type(m) for m in layers[:-1]] == expected
    assert type(layers[-1]).__name__ == "OutputFunction" and layers[-1].kind == "sigmoid"
    assert [m.out_channels for m in layers if isinstance(m, nn.Conv2d)] == [128, 128, 64, 64, 32, 32]
    assert all(m.padding == (0, 0) and m.kernel_size == (3, 3) for m in layers if isinstance(m, nn.Conv2d))
    assert [(m.in_features, m.out_features) for m in layers if isinstance(m, nn.Linear)] == \
        [(800, 256), (256, 128), (128, 37)]
    assert [m.p for m in layers if isinstance(m, nn.Dropout)] == [0.5]

    flatten_at = [i for i, m in enumerate(layers) if isinstance(m, nn.Flatten)][0]
    model.eval()
    with torch.no_grad():
        assert model[:flatten_at](torch.rand(1, 3, 74, 74)).shape == (1, 32, 5, 5)
        assert model[:flatten_at + 1](torch.rand(1, 3, 74, 74)).shape == (1, 800)


def test_seed_cnn_keras_initialisation():
    model = create_model("seed-cnn")
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            assert torch.count_nonzero(m.bias) == 0  # Keras: zero bias
            fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(m.weight)
            assert m.weight.abs().max() <= (6 / (fan_in + fan_out)) ** 0.5  # glorot_uniform's bound


# --------------------------------------------------------------------------------------------------------------
# ResNet: torchvision's layout
# --------------------------------------------------------------------------------------------------------------

def torchvision_resnet50_backbone_keys() -> list[str]:
    """torchvision resnet50's state-dict keys without fc.*, written out from its architecture."""
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    keys = ["conv1.weight"] + [f"bn1.{k}" for k in bn]
    for stage, n_blocks in enumerate((3, 4, 6, 3), start=1):
        for block in range(n_blocks):
            p = f"layer{stage}.{block}"
            for i in (1, 2, 3):
                keys += [f"{p}.conv{i}.weight"] + [f"{p}.bn{i}.{k}" for k in bn]
            if block == 0:
                keys += [f"{p}.downsample.0.weight"] + [f"{p}.downsample.1.{k}" for k in bn]
    return keys


def test_resnet50_matches_torchvision_layout():
    net = create_model("seed-resnet50")
    model = net.backbone
    backbone = model.backbone_state_dict()
    reference = torchvision_resnet50_backbone_keys()
    # 53 convs (1 stem + 16 blocks * 3 + 4 shortcuts), each with a BatchNorm of 5 entries: 53 + 53 * 5 = 318.
    assert len(reference) == 318
    assert sorted(backbone) == sorted(reference)
    for key in ("layer4.2.bn3.running_var", "layer1.0.downsample.0.weight", "bn1.num_batches_tracked"):
        assert key in backbone
    # torchvision resnet50 has 25,557,032 parameters; minus fc (2048 * 1000 + 1000) leaves 23,508,032.
    assert sum(p.numel() for n, p in net.named_parameters() if not n.startswith("head.")) == 23_508_032
    assert model.layer2[0].conv2.stride == (2, 2) and model.layer2[0].conv1.stride == (1, 1)  # v1.5

    state = net.state_dict()
    assert not any(k.startswith(("fc.", "backbone.fc.")) for k in state)
    # normalisation buffers not saved
    assert set(state) - {f"backbone.{k}" for k in reference} == {"head.linear.weight", "head.linear.bias"}
    assert net.head.linear.in_features == 18_432
    assert sum(p.numel() for p in net.parameters()) == 23_508_032 + 18_432 * 37 + 37  # 24,190,053
    with torch.no_grad():
        assert model.eval().features(torch.rand(2, 3, 74, 74)).shape == (2, 2048, 3, 3)


def test_resnet_normalises_its_input_with_imagenet_statistics():
    model = create_model("seed-resnet50").eval().backbone
    with torch.no_grad():
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        assert torch.equal(model.input_mean, mean)
        model.conv1.weight.zero_()  # the stem sees (x - mean) / std; a mean-coloured image gives 0 in every pixel
        x = mean.expand(1, 3, 74, 74)
        stem = model.conv1((x - model.input_mean) / model.input_std)
        assert stem.abs().max() == 0


def test_resnet_zero_init_residual_option():
    backbone = ResNet(zero_init_residual=True)
    assert all(torch.count_nonzero(b.bn3.weight) == 0 for layer in (backbone.layer1, backbone.layer4) for b in layer)
    assert torch.count_nonzero(ResNet().layer1[0].bn3.weight) > 0


# --------------------------------------------------------------------------------------------------------------
# ResNet: loading torchvision-format weights
# --------------------------------------------------------------------------------------------------------------

@pytest.fixture
def torchvision_state() -> dict[str, torch.Tensor]:
    """A stand-in for torchvision's resnet50 file: random tensors of the right shapes, with a 1000-class fc."""
    generator = torch.Generator().manual_seed(1)
    state = {}
    for key, value in create_model("seed-resnet50").backbone.backbone_state_dict().items():
        if value.is_floating_point():
            state[key] = torch.randn(value.shape, generator=generator).abs()  # abs: valid running_var too
        else:
            state[key] = torch.tensor(7, dtype=value.dtype)
    state["fc.weight"] = torch.randn(1000, 2048, generator=generator)
    state["fc.bias"] = torch.randn(1000, generator=generator)
    return state


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    """Point torch.hub's cache at tmp_path so that nothing is written anywhere else."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    return tmp_path / "hub"


def _save(state, path):
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize("how", ["pth", "safetensors", "file-url"])
def test_load_torchvision_weights(how, torchvision_state, tmp_path, hub_dir, caplog):
    if how == "file-url":
        source = _save(torchvision_state, tmp_path / "resnet50-weights.pth").as_uri()
    else:
        source = str(_save(torchvision_state, tmp_path / f"resnet50.{how}"))
    model = create_model("seed-resnet50")
    head_before = model.head.linear.weight.clone()
    with caplog.at_level(logging.INFO, logger="gzmorph"):
        get_spec("seed-resnet50").load_pretrained(model, source)
    for key, value in model.backbone.backbone_state_dict().items():
        assert torch.equal(value, torchvision_state[key]), key
    assert torch.equal(model.head.linear.weight, head_before)  # fc.* in the file never reaches our head
    assert "loaded 318 pretrained tensors" in caplog.text
    if how == "file-url":
        assert (hub_dir / "checkpoints" / "resnet50-weights.pth").is_file()


def test_load_imagenet_alias_uses_the_official_url_safely(torchvision_state, monkeypatch):
    calls = []

    def fake_load_state_dict_from_url(url, **kwargs):
        calls.append((url, kwargs))
        return torchvision_state

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_load_state_dict_from_url)
    load_torchvision_weights(create_model("seed-resnet50"), "imagenet")
    (url, kwargs), = calls
    assert url == resnet_module.IMAGENET_URL == "https://download.pytorch.org/models/resnet50-11ad3fa6.pth"
    assert kwargs["weights_only"] is True and kwargs["check_hash"] is True


@pytest.mark.parametrize("damage, expected", [
    (lambda s: s.update({"layer2.1.conv2.weight": torch.zeros(128, 128, 1, 1)}), "layer2.1.conv2.weight"),
    (lambda s: s.pop("layer4.2.bn3.running_var"), "layer4.2.bn3.running_var"),
    (lambda s: s.update({"layer3.6.conv1.weight": torch.zeros(256, 1024, 1, 1)}), "layer3.6.conv1.weight"),
])
def test_load_rejects_mismatched_weights(damage, expected, torchvision_state, tmp_path):
    damage(torchvision_state)
    for suffix in (".pth", ".safetensors"):
        path = _save(torchvision_state, tmp_path / f"bad{suffix}")
        with pytest.raises(GzmorphError, match=expected) as info:
            load_torchvision_weights(create_model("seed-resnet50"), str(path))
        assert str(path) in str(info.value)


def test_load_tolerates_missing_num_batches_tracked(torchvision_state, tmp_path):
    state = {k: v for k, v in torchvision_state.items() if not k.endswith("num_batches_tracked")}
    model = create_model("seed-resnet50")
    load_torchvision_weights(model, str(_save(state, tmp_path / "old.pth")))
    assert torch.equal(model.backbone.layer1[0].bn1.running_var, state["layer1.0.bn1.running_var"])


def test_load_reports_missing_files_and_unknown_formats(tmp_path):
    model = create_model("seed-resnet50")
    with pytest.raises(GzmorphError, match="not found"):
        load_torchvision_weights(model, str(tmp_path / "nowhere.pth"))
    (tmp_path / "weights.h5").write_bytes(b"\0")
    with pytest.raises(GzmorphError, match="unknown weights format"):
        load_torchvision_weights(model, str(tmp_path / "weights.h5"))
    with pytest.raises(GzmorphError, match="scheme"):
        load_torchvision_weights(model, "ftp://example.org/resnet50.pth")


class _Malicious:
    """Unpickling this would create a file: what a booby-trapped checkpoint could do (or worse)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.mark.parametrize("via_url", [False, True])
def test_load_refuses_pickled_code(via_url, torchvision_state, tmp_path, hub_dir):
    marker = tmp_path / "pwned"
    torchvision_state["fc.extra"] = _Malicious(marker)
    path = tmp_path / "evil.pth"
    torch.save(torchvision_state, path)
    with pytest.raises(GzmorphError, match="refused"):
        load_torchvision_weights(create_model("seed-resnet50"), path.as_uri() if via_url else str(path))
    assert not marker.exists()


# --------------------------------------------------------------------------------------------------------------
# ResNet: Keras-style freezing (the report froze the first 143 of Keras ResNet50's 175 layers)
# --------------------------------------------------------------------------------------------------------------

def test_keras_layer_list():
    names = keras_layer_names()
    assert len(names) == 175 and len(set(names)) == 175
    assert names[:7] == ["input_1", "conv1_pad", "conv1_conv", "conv1_bn", "conv1_relu", "pool1_pad", "pool1_pool"]
    assert names[7:19] == [f"conv2_block1_{s}" for s in
                           ("1_conv", "1_bn", "1_relu", "2_conv", "2_bn", "2_relu",
                            "0_conv", "3_conv", "0_bn", "3_bn", "add", "out")]
    assert (names[38], names[39], names[80], names[81], names[142], names[143], names[174]) == (
        "conv2_block3_out", "conv3_block1_1_conv", "conv3_block4_out", "conv4_block1_1_conv",
        "conv4_block6_out", "conv5_block1_1_conv", "conv5_block3_out")
    plan = dict(keras_layer_plan())
    assert plan["conv5_block1_1_conv"] == "layer4.0.conv1"
    assert plan["conv2_block1_0_bn"] == "layer1.0.downsample.1"
    assert plan["conv1_relu"] is None
    # Every torch module with weights is some Keras layer, exactly once.
    backbone = ResNet()
    weighted = {n for n, m in backbone.named_modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))}
    mapped = [p for p in plan.values() if p is not None]
    assert sorted(mapped) == sorted(weighted)


def _bn_modules(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}


def test_freeze_143_leaves_layer4_and_head_trainable():
    torch.manual_seed(0)
    model = create_model("seed-resnet50", freeze_layers=143)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if n.startswith(("backbone.layer4.", "head."))}

    model.train()
    for name, bn in _bn_modules(model).items():
        assert bn.training == name.startswith("backbone.layer4."), name

    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimiser = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    out = model(torch.rand(4, 3, 74, 74))
    nn.functional.binary_cross_entropy(out, torch.rand(4, 37)).backward()
    optimiser.step()
    after = model.state_dict()
    for key, value in before.items():
        if key.startswith(("backbone.layer4.", "head.")):
            continue
        assert torch.equal(after[key], value), key  # weights and BN running statistics alike
    assert not torch.equal(after["backbone.layer4.0.conv1.weight"], before["backbone.layer4.0.conv1.weight"])
    assert not torch.equal(after["backbone.layer4.2.bn3.running_mean"], before["backbone.layer4.2.bn3.running_mean"])
    assert not torch.equal(after["head.linear.weight"], before["head.linear.weight"])


def test_freeze_extremes_and_validation():
    everything = create_model("seed-resnet50", freeze_layers=175)
    assert {n for n, p in everything.named_parameters() if p.requires_grad} == {"head.linear.weight",
                                                                                 "head.linear.bias"}
    assert not any(bn.training for bn in _bn_modules(everything.train()).values())
    nothing = create_model("seed-resnet50", freeze_layers=0)
    assert all(p.requires_grad for p in nothing.parameters())
    assert all(bn.training for bn in _bn_modules(nothing.train()).values())
    partial = create_model("seed-resnet50", freeze_layers=10)  # input .. conv2_block1_1_relu
    assert [n for n, p in partial.named_parameters() if not p.requires_grad] == [
        f"backbone.{n}" for n in ("conv1.weight", "bn1.weight", "bn1.bias", "layer1.0.conv1.weight",
                                  "layer1.0.bn1.weight", "layer1.0.bn1.bias")]
    for bad in (-1, 176, 1.5, True, "many"):
        with pytest.raises(GzmorphError, match="freeze_layers"):
            create_model("seed-resnet50", freeze_layers=bad)
