"""The ``objects`` benchmark: its statistics against the VOC 2007 figures it claims."""

import numpy as np
import pytest

from activedet.data.benchmark import VOC2007_TRAINVAL_OBJECTS, load_objects, voc_class_frequencies, \
    voc_objects_per_image
from activedet.data.builtin import BUILTINS, load_builtin
from activedet.errors import ConfigError, DatasetError


def test_voc_figures_are_the_published_totals():
    assert sum(VOC2007_TRAINVAL_OBJECTS.values()) == 12608  # VOC 2007 trainval objects
    assert voc_objects_per_image() == pytest.approx(12608 / 5011)
    freq = voc_class_frequencies(10)
    assert freq[0] == pytest.approx((4690 + 1250) / 12608)  # person + car
    assert freq[-1] == pytest.approx((229 + 215) / 12608)  # bus + diningtable
    assert np.all(np.diff(freq) <= 0) and freq.sum() == pytest.approx(1.0)


@pytest.fixture(scope="module")
def big_train():
    return load_objects("train", {"n_train": 1500, "seed": 3})


def test_objects_per_image_within_10_percent_of_voc(big_train):
    counts = np.array([len(big_train.record(i).boxes) for i in big_train.ids])
    assert counts.min() >= 1  # VOC has no image without an object
    assert abs(counts.mean() / voc_objects_per_image() - 1) < 0.10


def test_class_frequencies_follow_voc_order(big_train):
    from scipy.stats import kendalltau

    labels = np.concatenate([big_train.record(i).labels for i in big_train.ids])
    got = np.bincount(labels - 1, minlength=10) / len(labels)
    want = voc_class_frequencies(10)
    assert kendalltau(got, want).statistic > 0.75
    sd = np.sqrt(want * (1 - want) / len(labels))  # each class within 4 binomial sd of VOC's share
    assert np.all(np.abs(got - want) < 4 * sd), (got, want)
    assert got.argmax() == 0


def test_deterministic_bounded_overlap_and_disjoint_splits():
    a = load_objects("train", {"n_train": 30})
    b = load_objects("train", {"n_train": 30})
    test = load_objects("test", {"n_test": 30})
    for i in a.ids:
        ra, rb = a.record(i), b.record(i)
        assert np.array_equal(ra.array, rb.array) and np.array_equal(ra.boxes, rb.boxes)
        assert ra.array.shape == (96, 96, 3) and ra.array.dtype == np.uint8
        bx = ra.boxes
        assert np.all(bx[:, 2] > bx[:, 0]) and np.all(bx[:, :2] >= 0) and np.all(bx[:, 2:] <= 96)
    assert not np.array_equal(a.record(1).array, test.record(1).array)
    assert a.class_names == test.class_names and len(a.class_names) == 10


def test_listed_and_options_checked():
    assert BUILTINS["objects"].task == "detection"
    assert len(load_builtin("objects", "test", {"n_test": 5, "image_size": 64}).ids) == 5
    with pytest.raises(ConfigError, match="image_size"):
        load_objects("train", {"image_size": 20})
    with pytest.raises(ConfigError, match="unknown option"):
        load_objects("train", {"n_val": 3})
    with pytest.raises(DatasetError, match="no split"):
        load_objects("val")
