"""The Synapse layout reader: a validation split holds out whole training cases, never a test case."""
from bench.data.organs import SYNAPSE_ORGANS
from bench.data.synapse import case_of, load_volume, open_synapse, validation_split


def test_validation_split_holds_out_whole_training_cases(tiny_dataset):
    ds = open_synapse(tiny_dataset, "tiny", SYNAPSE_ORGANS)
    val = validation_split(ds, fraction=0.5, seed=0)
    assert val.test_cases and not set(val.test_cases) & set(ds.test_cases)
    assert not {case_of(s) for s in val.train_slices} & set(val.test_cases)
    assert validation_split(ds, 0.5, 0) == val
    image, label, _ = load_volume(val, val.test_cases[0])
    n = sum(case_of(s) == val.test_cases[0] for s in ds.train_slices)
    assert image.shape[0] == label.shape[0] == n
