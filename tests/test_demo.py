"""The README's main job writes real, non-blank figures."""

import matplotlib.image as mpimg

from captum_feedback.app import demo


def test_demo_writes_every_figure_and_none_is_blank(tmp_path):
    written = demo.run(tmp_path, ["coffee"])
    assert [p.name for p in written] == ["methods_coffee.png", "iterations_coffee.png", "two_objects.png",
                                         "voc_localization.png"]
    for path in written:
        pixels = mpimg.imread(path)
        assert pixels.shape[0] > 200 and pixels.std() > 0.05  # not blank
