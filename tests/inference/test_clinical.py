"""Clinical read-outs (midog_d2.inference.clinical): the 10-HPF window, the hotspot on a
hand-made layout, the density per mm²."""

import itertools

import numpy as np
import pytest

from midog_d2.inference.clinical import HPF10_MM2, find_hotspot, hotspot_window_px, mitotic_density


def test_ten_hpf_window_is_2_37_mm2_at_4_to_3():
    w, h = hotspot_window_px(0.25)
    assert w / h == pytest.approx(4 / 3)
    assert w * h * (0.25e-3) ** 2 == pytest.approx(HPF10_MM2)
    assert w == pytest.approx(7110.5, abs=0.5)  # 1.778 mm wide at 0.25 µm/px
    with pytest.raises(ValueError):
        hotspot_window_px(0.0)


def test_hotspot_finds_the_densest_window_of_a_hand_made_layout():
    mpp = 1.0  # 1 µm/px: a 2 mm² window 4:3 is 1633 x 1225 px
    w, h = hotspot_window_px(mpp, area_mm2=2.0)
    cluster = [(5000 + dx, 3000 + dy) for dx, dy in itertools.product((0, 400, 800), (0, 500))]
    spread = [(500, 500), (9000, 500), (500, 7000)]
    low = [(5100, 3100)] * 4  # below the threshold: not counted
    xy = np.array(cluster + spread + low, dtype=float)
    scores = np.array([0.9] * len(cluster) + [0.8] * len(spread) + [0.2] * len(low))
    hs = find_hotspot(xy, scores, 0.5, (10000, 8000), mpp, area_mm2=2.0)
    assert hs.count == 6
    assert hs.x0 <= 5000 and hs.x1 > 5800 and hs.y0 <= 3000 and hs.y1 > 3500
    assert hs.x1 - hs.x0 == pytest.approx(w) and hs.y1 - hs.y0 == pytest.approx(h)
    assert hs.area_mm2 == pytest.approx(2.0) and hs.per_mm2 == pytest.approx(3.0)
    # brute force over a fine grid of positions agrees on the count
    best = 0
    for x0 in np.arange(0, 10000 - w, 50):
        for y0 in np.arange(0, 8000 - h, 50):
            inside = (xy[:, 0] >= x0) & (xy[:, 0] < x0 + w) & (xy[:, 1] >= y0) & (xy[:, 1] < y0 + h)
            best = max(best, int((inside & (scores >= 0.5)).sum()))
    assert best == hs.count


def test_hotspot_edge_cases():
    assert find_hotspot(np.zeros((0, 2)), [], 0.5, (100, 100), 0.25) is None
    assert find_hotspot([[10, 10]], [0.1], 0.5, (100, 100), 0.25) is None
    # an image smaller than the window: the window is the image
    hs = find_hotspot([[10, 10], [90, 60]], [0.9, 0.9], 0.5, (100, 80), 0.25)
    assert (hs.x0, hs.y0, hs.x1, hs.y1, hs.count) == (0.0, 0.0, 100.0, 80.0, 2)
    assert hs.area_mm2 == pytest.approx(100 * 80 * 0.25e-3**2)
    assert mitotic_density(12, 3.0) == 4.0 and np.isnan(mitotic_density(1, 0.0))
