"""Fashion-MNIST IDX reading and the deterministic cluttered scenes built from it."""

import gzip

import numpy as np
import pytest
import torch

from captum_feedback.data import ClutteredScenes, collate, load_fashion_mnist, read_idx


def write_idx(path, array, compress=False):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trip(tmp_path, compress):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("x.idx.gz" if compress else "x.idx")
    write_idx(path, array, compress)
    assert np.array_equal(read_idx(path), array)


def test_read_idx_rejects_bad_magic_and_truncation(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "bad")
    write_idx(tmp_path / "short", np.zeros((2, 2), np.uint8))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-1])
    with pytest.raises(ValueError, match="shape"):
        read_idx(tmp_path / "short")


def test_loader_reads_any_idx_copy(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.ones((3, 28, 28), np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([0, 1, 2], np.uint8), compress=False)
    images, labels = load_fashion_mnist("test", root=tmp_path)
    assert images.shape == (3, 28, 28) and labels.tolist() == [0, 1, 2]


def test_loader_names_the_debian_package_when_files_are_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_fashion_mnist("train", root=tmp_path)
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("val")


def test_debian_package_holds_the_full_data_set():
    assert load_fashion_mnist("train")[0].shape == (60000, 28, 28)
    images, labels = load_fashion_mnist("test")
    assert images.shape == (10000, 28, 28) and sorted(set(labels.tolist())) == list(range(10))


@pytest.fixture(scope="module")
def scenes():
    return ClutteredScenes("test", length=40, seed=3)


def test_scenes_are_a_pure_function_of_split_seed_and_index(scenes):
    again = ClutteredScenes("test", length=40, seed=3)
    assert torch.equal(scenes[7].image, again[7].image) and torch.equal(scenes[7].masks, again[7].masks)
    assert not torch.equal(scenes[7].image, ClutteredScenes("test", length=40, seed=4)[7].image)
    assert not torch.equal(scenes[7].image, ClutteredScenes("train", length=40, seed=3)[7].image)


def test_scene_ground_truth_is_exact(scenes):
    counts = set()
    for scene in scenes:
        k = len(scene.classes)
        counts.add(k)
        assert scene.image.shape == (1, 96, 96) and scene.image.min() >= 0 and scene.image.max() <= 1
        assert len(set(scene.classes.tolist())) == k  # different classes
        assert torch.equal(scene.labels.nonzero().flatten().sort().values, scene.classes.sort().values)
        assert scene.masks.shape == (k, 96, 96) and (scene.masks.sum(0) <= 1).all()  # no overlap
        for mask, box in zip(scene.masks, scene.boxes):
            rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
            assert box.tolist() == [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]  # tight, pixel edges
            assert (scene.image[0][mask] > scenes.mask_threshold).all()  # item pixels are the item's
        expected = sum((mask.long() * (cls + 1) for mask, cls in zip(scene.masks, scene.classes)))
        assert torch.equal(scene.label_map, expected)  # 0 background, class c labelled c + 1
    assert counts == {1, 2, 3}


def test_batches_stack_images_and_keep_ground_truth_per_scene(scenes):
    batch = scenes.batch([0, 1, 2])
    assert batch.images.shape == (3, 1, 96, 96) and batch.labels.shape == (3, 10)
    assert [len(c) for c in batch.classes] == [len(m) for m in batch.masks] == [len(b) for b in batch.boxes]
    assert torch.equal(collate([scenes[1]]).images[0], batch.images[1])
    assert batch.label_maps.shape == (3, 96, 96) and torch.equal(batch.label_maps[2], scenes[2].label_map)


def test_scene_arguments_are_checked():
    with pytest.raises(ValueError, match="fit the canvas of 32 x 32"):
        ClutteredScenes(size=32)  # items of up to 44 pixels
    with pytest.raises(ValueError, match="at least 8 pixels"):
        ClutteredScenes(size=48, item_sizes=(4, 20))
    assert ClutteredScenes(size=48, item_sizes=(20, 40), clutter=4)[0].image.shape == (1, 48, 48)
    with pytest.raises(ValueError, match="max_items"):
        ClutteredScenes(max_items=0)
    with pytest.raises(IndexError):
        ClutteredScenes(length=2)[2]
