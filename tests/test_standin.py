"""The stand-in Inception's calibration sources and its refusals (fast: no Inception run)."""

import numpy as np
import pytest
from PIL import Image

from ddpm.data.demo import draw_face
from ddpm.errors import DdpmError
from ddpm.metrics.inception_standin import (PROBE_IMAGES, demo_drawings, folder_images,
                                            make_standin_weights)


def test_demo_drawings_are_prepared_repeatable_and_not_a_runs_demo_set():
    a, b = demo_drawings(3, size=16), demo_drawings(3, size=16)
    assert a.shape == (3, 16, 16, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    # data.seed 0's demo set, prepared the same way, shares no image with it
    run_set = np.stack([np.asarray(draw_face(0, i).resize((16, 16))) for i in range(3)])
    assert not any(np.array_equal(x, y) for x in a for y in run_set)
    assert not np.array_equal(demo_drawings(1, seed=1, size=16), a[:1])


def test_folder_images_takes_files_in_name_order_after_skip(tmp_path):
    for i in range(4):
        Image.new("RGB", (20, 10), (60 * i, 0, 0)).save(tmp_path / f"{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    images = folder_images(tmp_path, 2, size=8, skip=1)
    assert images.shape == (2, 8, 8, 3)
    assert [int(x[0, 0, 0]) for x in images] == [60, 120]  # files 1 and 2, cropped square
    with pytest.raises(DdpmError, match="4 images, need 5"):
        folder_images(tmp_path, 4, size=8, skip=1)


def test_calibration_refuses_too_few_images_before_any_work(tmp_path):
    with pytest.raises(DdpmError, match=f"more than {PROBE_IMAGES} images"):
        make_standin_weights(tmp_path / "w.pth", images=demo_drawings(PROBE_IMAGES, size=8))
    assert not (tmp_path / "w.pth").exists()


def test_dc_free_zeroes_spatial_filter_means_and_leaves_1x1_convs():
    import torch
    from ddpm.metrics.inception_standin import make_dc_free, untrained_inception
    _, untouched = untrained_inception(0)
    _, first = untrained_inception(0)
    _, every = untrained_inception(0)
    assert make_dc_free(first, "first") == 1 and make_dc_free(every, "all") == 54
    convs = lambda net: {n: m.weight for n, m in net.named_modules()  # noqa: E731
                         if isinstance(m, torch.nn.Conv2d)}
    for name, w in convs(every).items():
        w0 = convs(untouched)[name]
        if w[0, 0].numel() > 1:
            assert w.mean(dim=(2, 3)).abs().max() < 1e-6
            assert torch.allclose(w, w0 - w0.mean(dim=(2, 3), keepdim=True))
        else:
            assert torch.equal(w, w0)
        w1 = convs(first)[name]
        assert torch.equal(w1, w) if name == "Conv2d_1a_3x3.conv" else torch.equal(w1, w0)
    with pytest.raises(DdpmError, match="dc_free must be one of"):
        make_dc_free(every, "none")


def test_unknown_dc_free_is_refused_before_any_work(tmp_path):
    with pytest.raises(DdpmError, match="dc_free must be one of"):
        make_standin_weights(tmp_path / "w.pth", images=demo_drawings(PROBE_IMAGES + 1, size=8),
                             dc_free="some")
    assert not (tmp_path / "w.pth").exists()
