"""Grids for the grid pointing game: photos the model classifies confidently on their own, drawn
into k x k grids of different classes, deterministically; and the photo pool they come from."""

import pytest
import torch

from captum_feedback.data.grids import Candidate, Cell, GridLayout, confident_cells, scene_candidates
from captum_feedback.data.photo_pool import SPLITS, PoolPhoto, package_photos


def cells(labels, side=4):
    return [Cell(f"photo-{k}", torch.full((3, side, side), k, dtype=torch.uint8), label, 0.9)
            for k, label in enumerate(labels)]


def test_a_grid_holds_k_by_k_cells_of_different_classes_with_their_boxes():
    layout = GridLayout(cells([0, 0, 1, 2, 3, 3, 4]), [str(c) for c in range(5)], count=6, k=2, seed=3)
    for index in range(len(layout)):
        grid = layout[index]
        labels = [i.label for i in grid.instances]
        assert grid.image.shape == (3, 8, 8) and len(set(labels)) == 4
        for instance, member in zip(grid.instances, layout.members(index)):
            x1, y1, x2, y2 = (int(v) for v in instance.box)
            assert (x2 - x1, y2 - y1) == (4, 4)
            assert torch.equal(grid.image[:, y1:y2, x1:x2], member.image)  # the cell is the photo


def test_grids_are_a_function_of_seed_and_index_only():
    pool, classes = cells(range(9)), [str(c) for c in range(9)]
    few, many = GridLayout(pool, classes, 2, seed=1), GridLayout(pool, classes, 20, seed=1)
    assert [c.key for c in few.members(1)] == [c.key for c in many.members(1)]
    other = GridLayout(pool, classes, 20, seed=2)
    assert any(few.members(i) != other.members(i) for i in range(2))


def test_too_few_classes_for_a_grid_is_an_error():
    with pytest.raises(ValueError, match="needs 4 classes"):
        GridLayout(cells([0, 1, 1, 2]), ["a", "b", "c"], 1)


def test_only_confident_photos_that_agree_with_their_label_become_cells():
    photos = [Candidate(f"p{k}", lambda k=k: torch.full((3, 6, 9), k, dtype=torch.uint8), label)
              for k, label in enumerate([None, None, 0, 0])]

    def scores(images):  # photo k: class k % 2 with probability 0.2 + 0.2 k
        k = images[:, 0, 0, 0].float()
        p = 0.2 + 0.2 * k
        return torch.stack([torch.where(k % 2 == 0, p, 1 - p), torch.where(k % 2 == 1, p, 1 - p)], 1)

    kept = confident_cells(photos, scores, side=5, confidence=0.5)
    # p0: class 1 at 0.8; p1: class 0 at 0.6; p2: class 0 at 0.6, its label; p3: class 1 at 0.8, not its label 0
    assert [(c.key, c.label) for c in kept] == [("p0", 1), ("p1", 0), ("p2", 0)]
    assert all(c.image.shape == (3, 5, 5) for c in kept)
    assert [c.key for c in confident_cells(photos, scores, 5, 0.7)] == ["p0"]


def test_scene_candidates_are_single_items_labelled_with_their_class():
    scenes = scene_candidates(6, side=48, seed=1)
    assert len(scenes) == 6 and all(0 <= s.label < 10 for s in scenes)
    image = scenes[0].read()
    assert image.shape == (3, 48, 48) and image.dtype == torch.uint8


def test_a_photo_keeps_its_split_whatever_else_is_installed(tmp_path):
    photo = PoolPhoto("doc/opencv-doc/examples/data/baboon.jpg", tmp_path / "baboon.jpg")
    assert photo.split in SPLITS and photo.split == PoolPhoto(photo.key, tmp_path / "elsewhere.png").split
    held_out, tune = package_photos("heldout"), package_photos("tune")
    assert held_out and tune and not {p.key for p in held_out} & {p.key for p in tune}
    assert len(held_out) + len(tune) == len(package_photos())
    with pytest.raises(ValueError, match="Unknown split"):
        package_photos("train")


def test_cutouts_are_composited_on_gray(tmp_path):
    from PIL import Image

    path = tmp_path / "stamp.png"
    Image.new("RGBA", (5, 4), (255, 0, 0, 0)).save(path)  # fully transparent red
    image = PoolPhoto("tuxpaint/stamps/stamp.png", path, "tuxpaint", cutout=True).read()
    assert image.shape == (3, 4, 5) and bool((image == 128).all())
