"""Reading images: every mode Pillow opens becomes 8-bit RGB with its values kept."""

import numpy as np
import pytest
import torch
from PIL import Image

from captum_feedback.data.photos import load_image, read_image

RAMP = np.linspace(0, 1, 64).reshape(8, 8)


def saved(tmp_path, array, mode, suffix=".png"):
    image = Image.fromarray(array)
    assert image.mode == mode
    path = tmp_path / f"image_{mode.replace(';', '_')}{suffix}"
    image.save(path)
    return path


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_a_16_bit_grayscale_image_keeps_its_ramp_instead_of_turning_white(tmp_path, suffix):
    path = saved(tmp_path, (RAMP * 65535).astype(np.uint16), "I;16", suffix)
    image, note = load_image(path)
    assert image.dtype == torch.uint8 and image.shape == (3, 8, 8)
    expected = torch.from_numpy(np.round(RAMP * 255).astype(np.uint8))
    assert (image[0].int() - expected.int()).abs().max() <= 1
    assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])
    assert "grayscale" in note and "65535" in note


def test_a_float_image_in_0_1_is_taken_as_it_is_and_others_are_stretched(tmp_path):
    image, note = load_image(saved(tmp_path, RAMP.astype(np.float32), "F", ".tif"))
    assert image[0, 0, 0] == 0 and image[0, -1, -1] == 255 and "divided by 1" in note
    image, note = load_image(saved(tmp_path, (RAMP * 10 - 5).astype(np.float32), "F", ".tif"))
    assert image[0, 0, 0] == 0 and image[0, -1, -1] == 255 and "stretched from [-5, 5]" in note


@pytest.mark.parametrize("mode, array", [
    ("L", (RAMP * 255).astype(np.uint8)),
    ("RGBA", np.dstack([(RAMP * 255).astype(np.uint8)] * 4)),
    ("LA", np.dstack([(RAMP * 255).astype(np.uint8)] * 2)),
])
def test_8_bit_modes_go_through_pillows_conversion_and_say_so(tmp_path, mode, array):
    image, note = load_image(saved(tmp_path, array, mode))
    assert image[0, 0, 0] == 0 and image[0, -1, -1] == 255
    assert note == f"mode {mode} converted to RGB"


def test_rgb_needs_no_note_and_read_image_drops_it(tmp_path):
    array = np.dstack([(RAMP * 255).astype(np.uint8)] * 3)
    path = saved(tmp_path, array, "RGB")
    assert load_image(path)[1] == ""
    assert torch.equal(read_image(path), torch.from_numpy(array).permute(2, 0, 1))
