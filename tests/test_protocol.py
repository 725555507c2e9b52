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


# Hashes of the shipped protocols before precision / cudnn / validation.during_run were keys: every
# run made until then carries them, so a change of the hash rules must leave them as they are.
EARLIER_HASHES = {"cpu": "fa8168cc9c5a", "paper": "2e19206b078d", "smoke": "8de84022456a"}


def test_new_keys_at_their_neutral_values_keep_earlier_hashes():
    for name, expected in EARLIER_HASHES.items():
        p = load_protocol(name)
        assert (p.precision, p.cudnn.benchmark, p.cudnn.deterministic) == ("fp32", False, True)
        assert p.hash() == expected
    smoke = load_protocol("smoke")
    assert smoke.override(precision="bf16").hash() != smoke.hash()
    assert smoke.override(cudnn={"benchmark": True, "deterministic": True}).hash() != smoke.hash()
    during = smoke.override(validation={"fraction": 0.2, "interval": 2, "during_run": True})
    assert during.hash() != smoke.hash()  # it trains on fewer cases
    assert during.override(validation={"fraction": 0.2, "interval": 4, "during_run": True}).hash() == during.hash()
    assert smoke.override(validation={"fraction": 0.5, "interval": 7}).hash() == smoke.hash()  # read by tune only


def test_set_overrides_are_validated_and_recorded_in_the_name():
    from bench.protocol import apply_sets, resolve_protocol

    cpu = load_protocol("cpu")
    p = resolve_protocol("cpu", ["batch_size=4", "evaluation.convention=strict", "augmentation.rot_flip_p=0.5"])
    assert (p.batch_size, p.evaluation.convention, p.augmentation.rot_flip_p) == (4, "strict", 0.5)
    assert p.evaluation.resize == cpu.evaluation.resize  # a dotted key changes that key only
    assert p.name == "cpu@augmentation.rot_flip_p=0.5,batch_size=4,evaluation.convention=strict"
    assert p.hash() != cpu.hash()
    # a value equal to the protocol's changes nothing, not even the name
    same = apply_sets(cpu, ["precision=fp32", "augmentation.rot_flip_p=0"])
    assert same.name == "cpu" and same.hash() == cpu.hash()
    paper = resolve_protocol("paper", ["iterations=10"])  # one budget replaces the other
    assert (paper.iterations, paper.epochs, paper.name) == (10, None, "paper@iterations=10")
    assert resolve_protocol("cpu", ["seeds=[0, 1]"]).seeds == [0, 1]


@pytest.mark.parametrize("item, needle", [
    ("nosuch=1", "unknown key 'nosuch'"),
    ("optimizer.momentun=0.9", "unknown key 'optimizer.momentun'"),
    ("nosuch.deep=1", "unknown key 'nosuch'"),
    ("batch_size.deep=1", "not a section 'batch_size'"),
    ("batch_size=four", "key 'batch_size'"),
    ("precision=fp8", "key 'precision'"),
    ("batch_size", "--set expects KEY=VALUE"),
    ("seeds=[0,", "cannot read the value"),
    ("name=mine", "not a setting"),
])
def test_bad_set_overrides_name_the_key(item, needle):
    from bench.protocol import resolve_protocol

    with pytest.raises(BenchError, match="--set") as e:
        resolve_protocol("cpu", [item])
    assert needle in str(e.value)


def test_shown_protocol_reads_back_with_the_same_hash(tmp_path: Path):
    from bench.protocol import protocol_yaml, resolve_protocol

    for name in list_protocols():
        p = resolve_protocol(name, ["batch_size=4", "precision=bf16"])
        text = protocol_yaml(p)
        assert text.startswith(f"# protocol {p.name}, hash {p.hash()}\n")
        (tmp_path / "mine.yaml").write_text(text)
        assert load_protocol(str(tmp_path / "mine.yaml")).hash() == p.hash()
