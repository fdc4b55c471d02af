import torch

from visionfit.data.loaders import EpochBatchSampler, SampleDataset
from visionfit.data.order import EpochOrder
from visionfit.data.samples import ArraySamples
from visionfit.data.transforms import PictureReader, Preprocess


def indices(sampler):
    return [[index for index, _, _ in batch] for batch in sampler]


def test_each_epoch_is_a_seeded_permutation():
    sampler = EpochBatchSampler(EpochOrder(10, 4, shuffle=True, seed=3, drop_last=False))
    sampler.set_epoch(1)
    first = indices(sampler)
    assert sorted(index for batch in first for index in batch) == list(range(10))
    assert [len(batch) for batch in first] == [4, 4, 2]
    assert indices(sampler) == first  # replayable
    sampler.set_epoch(2)
    assert indices(sampler) != first
    other_seed = EpochBatchSampler(EpochOrder(10, 4, shuffle=True, seed=4, drop_last=False))
    other_seed.set_epoch(1)
    assert indices(other_seed) != first


def test_keys_carry_each_samples_position_in_the_epoch():
    sampler = EpochBatchSampler(EpochOrder(10, 4, shuffle=True, seed=3, drop_last=False))
    sampler.set_epoch(1)
    positions = [position for batch in sampler for _, _, position in batch]
    assert positions == list(range(10))


def test_start_batch_continues_the_same_epoch():
    sampler = EpochBatchSampler(EpochOrder(20, 3, shuffle=True, seed=0, drop_last=True))
    sampler.set_epoch(5)
    whole = list(sampler)
    sampler.set_epoch(5, start_batch=4)
    assert list(sampler) == whole[4:] and len(sampler) == len(whole) - 4


def test_no_shuffle_keeps_file_order():
    sampler = EpochBatchSampler(EpochOrder(5, 2, shuffle=False, seed=0, drop_last=False))
    assert indices(sampler) == [[0, 1], [2, 3], [4]]


def test_ragged_last_batch_is_dropped_unless_it_is_the_only_one():
    assert (
        EpochBatchSampler(EpochOrder(10, 4, shuffle=False, seed=0, drop_last=True)).batches_per_epoch() == 2
    )
    tiny = EpochBatchSampler(EpochOrder(3, 64, shuffle=False, seed=0, drop_last=True))
    assert indices(tiny) == [[0, 1, 2]]


def test_augmentation_seeds_differ_by_epoch_and_sample():
    sampler = EpochBatchSampler(EpochOrder(4, 4, shuffle=False, seed=0, drop_last=False))
    sampler.set_epoch(1)
    seeds_one = [seed for _, seed, _ in next(iter(sampler))]
    sampler.set_epoch(2)
    seeds_two = [seed for _, seed, _ in next(iter(sampler))]
    assert len(set(seeds_one + seeds_two)) == 8


def test_dataset_leaves_the_global_rng_alone():
    samples = ArraySamples(torch.zeros(2, 3, 96, 96, dtype=torch.uint8), torch.tensor([0, 1]))
    dataset = SampleDataset(samples, PictureReader(Preprocess(64, (0,) * 3, (1,) * 3), random_crop=True))
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    image, label, position = dataset[(0, 99, 5)]
    assert torch.equal(torch.rand(1), expected)
    assert image.dtype == torch.uint8 and label == 0 and position == 5
