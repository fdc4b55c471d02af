import torch

from visionfit.data.cifar import ArraySamples
from visionfit.data.loaders import EpochBatchSampler, SampleDataset, build_train_loader
from visionfit.data.transforms import Preprocess, build_train_transform


def indices(sampler):
    return [[index for index, _ in batch] for batch in sampler]


def test_each_epoch_is_a_seeded_permutation():
    sampler = EpochBatchSampler(10, 4, shuffle=True, seed=3, drop_last=False)
    sampler.set_epoch(1)
    first = indices(sampler)
    assert sorted(index for batch in first for index in batch) == list(range(10))
    assert [len(batch) for batch in first] == [4, 4, 2]
    assert indices(sampler) == first  # replayable
    sampler.set_epoch(2)
    assert indices(sampler) != first
    other_seed = EpochBatchSampler(10, 4, shuffle=True, seed=4, drop_last=False)
    other_seed.set_epoch(1)
    assert indices(other_seed) != first


def test_start_batch_continues_the_same_epoch():
    sampler = EpochBatchSampler(20, 3, shuffle=True, seed=0, drop_last=True)
    sampler.set_epoch(5)
    whole = list(sampler)
    sampler.set_epoch(5, start_batch=4)
    assert list(sampler) == whole[4:] and len(sampler) == len(whole) - 4


def test_no_shuffle_keeps_file_order():
    sampler = EpochBatchSampler(5, 2, shuffle=False, seed=0, drop_last=False)
    assert indices(sampler) == [[0, 1], [2, 3], [4]]


def test_ragged_last_batch_is_dropped_unless_it_is_the_only_one():
    assert EpochBatchSampler(10, 4, shuffle=False, seed=0, drop_last=True).batches_per_epoch() == 2
    tiny = EpochBatchSampler(3, 64, shuffle=False, seed=0, drop_last=True)
    assert indices(tiny) == [[0, 1, 2]]


def test_augmentation_seeds_differ_by_epoch_and_sample():
    sampler = EpochBatchSampler(4, 4, shuffle=False, seed=0, drop_last=False)
    sampler.set_epoch(1)
    seeds_one = [seed for _, seed in next(iter(sampler))]
    sampler.set_epoch(2)
    seeds_two = [seed for _, seed in next(iter(sampler))]
    assert len(set(seeds_one + seeds_two)) == 8


def test_batches_do_not_depend_on_the_number_of_workers():
    generator = torch.Generator().manual_seed(0)
    samples = ArraySamples(
        torch.randint(0, 256, (24, 3, 32, 32), dtype=torch.uint8, generator=generator), torch.arange(24) % 3
    )
    transform = build_train_transform(Preprocess(32, (0.5,) * 3, (0.2,) * 3), augment=True)

    def epoch_batches(workers):
        loader, sampler = build_train_loader(
            samples,
            transform,
            batch_size=8,
            shuffle=True,
            seed=1,
            workers=workers,
            device=torch.device("cpu"),
        )
        sampler.set_epoch(3)
        return list(loader)

    for (images_a, labels_a), (images_b, labels_b) in zip(epoch_batches(0), epoch_batches(2), strict=True):
        assert torch.equal(images_a, images_b) and torch.equal(labels_a, labels_b)


def test_dataset_leaves_the_global_rng_alone():
    samples = ArraySamples(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.tensor([0, 1]))
    dataset = SampleDataset(samples, build_train_transform(Preprocess(32, (0,) * 3, (1,) * 3), True))
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    dataset[(0, 99)]
    assert torch.equal(torch.rand(1), expected)
