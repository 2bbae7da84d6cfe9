"""Point-cloud augmentation: points and boxes stay consistent under every transform."""
import numpy as np
import pytest

from gs_reasoner_ros.training.augment import IDENTITY, PointAugmentation


def _room(rng, n_boxes=4, per_box=50):
    """Random boxes ([min, max]) and points drawn strictly inside each."""
    lo = rng.uniform(-3, 3, (n_boxes, 3))
    hi = lo + rng.uniform(0.2, 1.5, (n_boxes, 3))
    pts = [rng.uniform(lo[k] + 1e-3, hi[k] - 1e-3, (per_box, 3)) for k in range(n_boxes)]
    return np.concatenate([lo, hi], 1), np.stack(pts)


def _all_transforms():
    """Every rotation, with and without scale and shifts, plus random draws."""
    out = [IDENTITY]
    for rot in (0.0, 0.5, 1.0, 1.5):
        out.append(PointAugmentation(rot_z=rot))
        out.append(PointAugmentation((0.8, 1.2, 0.9), rot, (0.3, None, -0.7)))
    rng = np.random.default_rng(0)
    out += [PointAugmentation.sample(rng) for _ in range(20)]
    return out


@pytest.mark.parametrize("aug", _all_transforms(), ids=lambda a: repr(a)[18:70])
def test_points_inside_boxes_stay_inside(aug):
    rng = np.random.default_rng(1)
    boxes, pts = _room(rng)
    new_boxes = aug.apply_boxes_minmax(boxes)
    new_pts = aug.apply_points(pts)
    assert np.all(new_boxes[:, :3] < new_boxes[:, 3:])
    for k in range(len(boxes)):
        assert np.all(new_pts[k] >= new_boxes[k, :3] - 1e-9)
        assert np.all(new_pts[k] <= new_boxes[k, 3:] + 1e-9)
    # the box is still the tight hull: transformed corners of the original box are its corners
    corners = np.array(np.meshgrid(*[[0, 1]] * 3, indexing="ij")).reshape(3, -1).T
    for k in range(len(boxes)):
        c = np.where(corners, boxes[k, 3:], boxes[k, :3])
        tc = aug.apply_points(c)
        np.testing.assert_allclose(tc.min(0), new_boxes[k, :3], atol=1e-12)
        np.testing.assert_allclose(tc.max(0), new_boxes[k, 3:], atol=1e-12)


@pytest.mark.parametrize("aug", _all_transforms(), ids=lambda a: repr(a)[18:70])
def test_center_size_and_minmax_forms_agree(aug):
    boxes, _ = _room(np.random.default_rng(2))
    center_size = np.concatenate([(boxes[:, :3] + boxes[:, 3:]) / 2, boxes[:, 3:] - boxes[:, :3]], 1)
    cs = aug.apply_boxes_center_size(center_size)
    mm = aug.apply_boxes_minmax(boxes)
    np.testing.assert_allclose(cs[:, :3], (mm[:, :3] + mm[:, 3:]) / 2, atol=1e-12)
    np.testing.assert_allclose(cs[:, 3:], mm[:, 3:] - mm[:, :3], atol=1e-12)
    # volume scales by the product of the scales only; rotation just permutes the sizes
    s = np.prod(aug.scale) if aug.scale is not None else 1.0
    np.testing.assert_allclose(np.prod(cs[:, 3:], 1), s * np.prod(center_size[:, 3:], 1))


@pytest.mark.parametrize("aug", _all_transforms(), ids=lambda a: repr(a)[18:70])
def test_inverse_round_trip(aug):
    boxes, pts = _room(np.random.default_rng(3))
    np.testing.assert_allclose(aug.inverse_points(aug.apply_points(pts)), pts, atol=1e-12)
    np.testing.assert_allclose(aug.inverse_boxes_minmax(aug.apply_boxes_minmax(boxes)), boxes, atol=1e-12)


def test_hand_computed_transform():
    # scale (2, 1, 1), then +90 deg about z ((x, y) -> (-y, x)), then x += 1
    aug = PointAugmentation((2.0, 1.0, 1.0), 0.5, (1.0, None, None))
    np.testing.assert_allclose(aug.apply_points(np.array([[1.0, 2.0, 3.0]])), [[1 - 2.0, 2.0, 3.0]])
    box = aug.apply_boxes_center_size([[1.0, 2.0, 3.0, 0.5, 1.0, 2.0]])
    np.testing.assert_allclose(box, [[-1.0, 2.0, 3.0, 1.0, 1.0, 2.0]])  # sizes (1, 1, 2): x<-y, y<-2*0.5


def test_point_map_shape_and_dtype_kept():
    aug = PointAugmentation((1.1, 0.9, 1.0), 1.0, (0.5, 0.5, 0.5))
    pm = np.random.default_rng(4).normal(size=(2, 5, 6, 3)).astype(np.float32)
    out = aug.apply_points(pm)
    assert out.shape == pm.shape and out.dtype == np.float32
    np.testing.assert_allclose(out[1, 2, 3], aug.matrix()[:3, :3] @ pm[1, 2, 3] + 0.5, rtol=1e-6)


def test_sampling_is_seeded_and_follows_the_authors_ranges():
    a = [PointAugmentation.sample(np.random.default_rng(7)) for _ in range(2)]
    assert a[0] == a[1]
    draws = [PointAugmentation.sample(np.random.default_rng(s)) for s in range(400)]
    scales = np.array([d.scale for d in draws if d.scale is not None])
    shifts = np.array([t for d in draws for t in d.trans if t is not None])
    assert 0.4 < len(scales) / len(draws) < 0.6  # p = 0.5
    assert scales.min() >= 0.75 and scales.max() <= 1.25
    assert shifts.min() >= -1 and shifts.max() <= 1
    assert {d.rot_z for d in draws} == {None, 0.0, 0.5, 1.0, 1.5}


def test_gcot_config_round_trip_and_errors():
    config = {"rescale": {"flag": True, "scale": [0.9, 1.1, 1.0]}, "rot_z": {"flag": True, "rot": 1.5},
              "trans_x": {"flag": False, "trans": 0.3}, "trans_y": {"flag": True, "trans": -0.25},
              "trans_z": {"flag": False, "trans": 0.0}}
    aug = PointAugmentation.from_config(config)
    assert aug == PointAugmentation((0.9, 1.1, 1.0), 1.5, (None, -0.25, None))
    assert PointAugmentation.from_config(aug.to_config()) == aug
    assert PointAugmentation.from_config({}) == IDENTITY
    with pytest.raises(ValueError, match="rot_z"):
        PointAugmentation.from_config({"rot_z": {"flag": True, "rot": 0.3}})
    with pytest.raises(ValueError, match="no 'scale'"):
        PointAugmentation.from_config({"rescale": {"flag": True}})
    with pytest.raises(ValueError, match="shape"):
        IDENTITY.apply_boxes_minmax(np.zeros((2, 4)))
