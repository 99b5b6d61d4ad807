"""The synthetic shapes world must be reproducible: the bundled model's figures depend on it."""

from __future__ import annotations

import random

import numpy as np
import pytest

from encoders.clip.bundled.shapes import COLOURS, SHAPES, Scene, all_scenes, make_pairs, render, sample_scenes


def _pixels(pairs):
    return [np.asarray(im) for im, _ in pairs]


def test_all_scenes_cover_every_valid_combination():
    scenes = all_scenes()
    assert len(scenes) == len(SHAPES) * len(COLOURS) * (len(COLOURS) - 1)
    assert len({s.caption for s in scenes}) == len(scenes)
    assert all(s.colour != s.background for s in scenes)


def test_scene_rejects_same_foreground_and_background():
    with pytest.raises(ValueError):
        Scene("circle", "red", "red")


def test_caption_template():
    assert Scene("star", "blue", "yellow").caption == "a blue star on a yellow background"


def test_same_seed_same_pairs_and_different_seed_differs():
    a, b = make_pairs(16, 7), make_pairs(16, 7)
    assert [c for _, c in a] == [c for _, c in b]
    assert all(np.array_equal(x, y) for x, y in zip(_pixels(a), _pixels(b)))
    c = make_pairs(16, 8)
    assert [t for _, t in a] != [t for _, t in c]


def test_make_pairs_uses_sample_scenes():
    assert [c for _, c in make_pairs(20, 3, distinct=True)] == [s.caption for s in sample_scenes(20, 3, distinct=True)]


def test_distinct_captions_when_asked():
    captions = [c for _, c in make_pairs(200, 12345, distinct=True)]
    assert len(set(captions)) == 200
    with pytest.raises(ValueError):
        sample_scenes(len(all_scenes()) + 1, 0, distinct=True)


@pytest.mark.parametrize("size", [32, 64, 224])
def test_images_are_rgb_of_requested_size(size):
    for im, _ in make_pairs(4, 1, size=size):
        assert im.mode == "RGB" and im.size == (size, size)


def test_foreground_and_background_colours_are_both_visible():
    # Corners are background (shapes keep a margin); the foreground colour must cover a real area.
    for scene in sample_scenes(30, 5):
        img = np.asarray(render(scene, random.Random(0), 64)).astype(int)
        bg = img[0, 0]
        assert (np.abs(img[0, -1] - bg).sum(), np.abs(img[-1, 0] - bg).sum()) == (0, 0)
        differs = np.abs(img - bg).sum(-1) > 60
        assert differs.mean() > 0.03, scene


def test_layout_does_not_depend_on_size():
    # A 224 px render shrunk to 64 px should look like the 64 px render of the same rng state.
    scene = Scene("triangle", "orange", "purple")
    small = np.asarray(render(scene, random.Random(42), 64)).astype(float)
    big = render(scene, random.Random(42), 224).resize((64, 64))
    assert np.abs(np.asarray(big).astype(float) - small).mean() < 8
