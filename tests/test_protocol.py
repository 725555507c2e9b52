"""Protocol validation: unknown keys and wrong types name the file and the key."""
from pathlib import Path

import pytest

from bench.errors import BenchError
from bench.protocol import list_protocols, load_protocol


def test_shipped_protocols_load():
    assert {"paper", "cpu", "smoke"} <= set(list_protocols())
    for name in list_protocols():
        p = load_protocol(name)
        assert p.name == name
        assert len(p.hash()) == 12


def test_paper_protocol_is_the_official_recipe():
    p = load_protocol("paper")
    assert (p.input_size, p.batch_size, p.base_lr, p.poly_power) == (224, 24, 0.05, 0.9)
    assert p.max_iterations(2211) == 13950
    assert (p.optimizer.momentum, p.optimizer.weight_decay) == (0.9, 1e-4)
    assert (p.loss.ce, p.loss.dice) == (0.4, 0.6)
    assert p.evaluation.resize == "nearest-label" and p.evaluation.convention == "synapse"


def test_official_batch_rule_is_explicit():
    p = load_protocol("paper")
    assert p.override(batch_size=12).effective_lr() == pytest.approx(0.025)
    assert p.override(batch_size=16).effective_lr() == 0.05  # the hidden rule skips powers of two
    assert load_protocol("cpu").effective_lr() == load_protocol("cpu").base_lr


def test_hash_changes_with_recipe_not_name():
    p = load_protocol("smoke")
    assert p.override(iterations=7).hash() != p.hash()
    assert p.model_copy(update={"name": "other"}).hash() == p.hash()


@pytest.mark.parametrize(
    "text, needle",
    [
        ("iterations: 5\nbatch_sise: 4\n", "unknown key 'batch_sise'"),
        ("iterations: 5\nbatch_size: four\n", "key 'batch_size'"),
        ("iterations: 5\noptimizer: {momentun: 0.9}\n", "unknown key 'optimizer.momentun'"),
        ("iterations: 5\nepochs: 3\n", "exactly one of 'epochs' and 'iterations'"),
        ("iterations: [5\n", "invalid YAML"),
        ("- 1\n- 2\n", "expected a mapping"),
    ],
)
def test_bad_protocol_files_name_file_and_key(tmp_path: Path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(BenchError) as e:
        load_protocol(str(path))
    assert str(path) in str(e.value) and needle in str(e.value)


def test_unknown_protocol_lists_shipped_ones():
    with pytest.raises(BenchError, match="unknown protocol 'nope'.*cpu.*paper.*smoke"):
        load_protocol("nope")
