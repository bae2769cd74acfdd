"""Per-image training draws (ddpm.training.draws): functions of (seed, epoch, position) alone,
with the right distributions, the same for any split of the epoch into ranks and batches."""

from __future__ import annotations

import pytest
import torch
from scipy import stats

import tiny
from ddpm.diffusion.samplers import sample_generators
from ddpm.training.data import FaceDataModule, TrainingBatch, TrainingImages
from ddpm.training.draws import draw, seed_dropout, stream

SHAPE = (3, 4, 4)


def test_a_draw_depends_on_seed_epoch_and_position_and_nothing_else():
    first = draw(0, 2, 7, SHAPE, 1000)
    again = draw(0, 2, 7, SHAPE, 1000)
    assert (first.t, first.flip) == (again.t, again.flip)
    assert torch.equal(first.noise, again.noise)
    for other in (draw(1, 2, 7, SHAPE, 1000), draw(0, 3, 7, SHAPE, 1000),
                  draw(0, 2, 8, SHAPE, 1000)):
        assert not torch.equal(other.noise, first.noise)
    # Its own stream: not the noise `sample_generators` gives a sample of the same number.
    sample = torch.randn(SHAPE, generator=sample_generators(0, [7])[0])
    assert not torch.equal(sample, first.noise)
    assert stream(0, 2, 7).integers(2**63) != stream(0, 2, 7, stream_id=1).integers(2**63)
    # 64-bit seeds stay distinct (torch's CPU generator would keep their low 32 bits only).
    assert stream(2**32 + 5, 0, 0).random() != stream(5, 0, 0).random()


def test_draws_are_uniform_timesteps_fair_flips_and_standard_normal_noise():
    draws = [draw(5, 0, position, SHAPE, 10) for position in range(4000)]
    counts = torch.bincount(torch.tensor([d.t for d in draws]), minlength=10)
    assert counts.numel() == 10                                     # 0 … T−1, never T
    assert stats.chisquare(counts.numpy()).pvalue > 1e-3
    flips = sum(d.flip for d in draws)
    assert stats.binomtest(flips, len(draws)).pvalue > 1e-3
    noise = torch.stack([d.noise for d in draws]).flatten().double()   # 64,000 values
    assert abs(noise.mean()) < 4 / len(noise) ** 0.5
    assert abs(noise.std() - 1) < 4 / (2 * len(noise)) ** 0.5
    assert stats.kstest(noise.numpy(), "norm").pvalue > 1e-3


def test_negative_epoch_or_position_is_refused():
    with pytest.raises(ValueError, match="must be >= 0"):
        draw(0, -1, 0, SHAPE, 10)
    with pytest.raises(ValueError, match="must be >= 0"):
        stream(0, 0, -3)
    assert stream(-1, 0, 0).random() == stream(2**64 - 1, 0, 0).random()  # 64-bit seed folding


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return tiny.prepared(tmp_path_factory.mktemp("draws") / "data", n=40)


def test_an_image_is_flipped_exactly_when_its_draw_says_and_flips_never_move_t_or_noise(
        prepared):
    from ddpm.data.prepared import PreparedImages
    images = PreparedImages(prepared, "train")
    flipping = TrainingImages(images, seed=3, timesteps=1000, hflip=True)
    plain = TrainingImages(images, seed=3, timesteps=1000, hflip=False)
    seen = set()
    for position in range(len(images)):
        key = (1, position, (7 * position + 3) % len(images))   # position ≠ index
        item, same = flipping[key], plain[key]
        expected = draw(3, 1, position, tuple(item.noise.shape), 1000)
        original = images[key[2]]
        assert torch.equal(item.images, original.flip(-1) if expected.flip else original)
        assert torch.equal(same.images, original)
        assert int(item.t) == int(same.t) == expected.t
        assert torch.equal(item.noise, same.noise) and torch.equal(item.noise, expected.noise)
        seen.add(expected.flip)
    assert seen == {True, False}


def by_position(batches) -> dict[int, tuple]:
    return {int(p): (int(i.sum()), int(t), float(n.sum()))
            for batch in batches for p, i, t, n in zip(batch.position, batch.images, batch.t,
                                                       batch.noise)}


def loader(prepared, batch_size, rank=0, world_size=1, epoch=0):
    data = FaceDataModule(prepared, batch_size=batch_size, num_workers=0, val_images=4,
                          timesteps=1000, seed=9, hflip=True)
    data.setup("fit")
    data._rank = lambda: (rank, world_size)
    data._batches_consumed = lambda: 0
    batches = data.train_dataloader()
    batches.order.set_epoch(epoch)
    return list(batches)


def test_ranks_and_batch_sizes_split_one_epoch_without_changing_any_images_draws(prepared):
    whole = by_position(loader(prepared, 8, epoch=2))
    ranks = [by_position(loader(prepared, 4, rank, 2, epoch=2)) for rank in (0, 1)]
    assert isinstance(loader(prepared, 8)[0], TrainingBatch)
    assert not set(ranks[0]) & set(ranks[1])
    assert {**ranks[0], **ranks[1]} == {p: whole[p] for p in set(ranks[0]) | set(ranks[1])}
    assert [t for _, t, _ in ranks[0].values()] != [t for _, t, _ in ranks[1].values()]
    assert by_position(loader(prepared, 8, epoch=3)) != whole       # a new epoch, new draws


def test_dropout_is_reseeded_per_batch_so_a_rerun_of_the_batch_drops_the_same_values():
    dropout = torch.nn.Dropout(0.5)
    x = torch.ones(1000)
    seed_dropout(0, 1, 16)
    first = dropout(x)
    torch.manual_seed(123)                                    # whatever ran in between
    seed_dropout(0, 1, 16)
    assert torch.equal(dropout(x), first)
    seed_dropout(0, 1, 24)
    assert not torch.equal(dropout(x), first)


def test_the_system_reseeds_dropout_from_each_training_batch_before_it_moves():
    from ddpm.training.system import DiffusionSystem
    params = tiny.params(model={"dropout": 0.1})
    system = DiffusionSystem(params.model, params.diffusion, params.train)
    batch = TrainingBatch(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([5, 9]),
                          torch.zeros(2, 3, 4, 4), torch.tensor([6, 8]), torch.tensor([2, 2]))
    system.on_before_batch_transfer(batch, 0)
    after_batch = torch.rand(8)
    seed_dropout(params.train.seed, 2, 6)            # epoch 2, the batch's first position
    assert torch.equal(torch.rand(8), after_batch)
