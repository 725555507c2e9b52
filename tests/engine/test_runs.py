"""Run identity and state (bench.engine.runs): a folder reads back as its identity, and one function
decides whether a folder's run is absent, complete, stale or in conflict with the settings asked for."""
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from bench.engine.runs import (
    RunId,
    RunSpec,
    RunState,
    external_id,
    list_runs,
    parse_run_path,
    run_id,
    run_state,
    scan_runs,
)
from bench.errors import BenchError
from bench.protocol import Protocol, load_protocol


def test_run_path_round_trip(tmp_path: Path):
    run = RunId("synthetic", "cpu", "swinunet-skip0", 3)
    assert run.path(tmp_path) == tmp_path / "synthetic" / "cpu" / "swinunet-skip0" / "seed3"
    assert parse_run_path(run.path(tmp_path)) == run


def test_an_external_run_has_its_own_folder_and_reads_back(tmp_path: Path):
    run = external_id("synthetic", "nnunet")
    assert run.external and run.path(tmp_path) == tmp_path / "synthetic" / "external" / "nnunet"
    assert parse_run_path(run.path(tmp_path)) == run
    with pytest.raises(BenchError, match="not a run folder"):
        parse_run_path(tmp_path / "synthetic" / "cpu" / "unet")


def test_a_run_is_named_by_its_protocol_name_and_model_label():
    class Ds:
        name = "tiny"

    proto = load_protocol("smoke").derive(iterations=3)
    run = run_id(RunSpec("swinunet", 1, 0.01, "flag --lr", knobs={"skip_connections": 0}), proto, Ds())
    assert run == RunId("tiny", "smoke@iterations=3", "swinunet@skip_connections=0", 1)


def _manifest(folder: Path, **fields) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({"key": "K", "device": "cpu", **fields}))


def test_run_state_answers_absent_complete_stale_and_conflict(tmp_path: Path):
    folder = tmp_path / "d" / "cpu" / "unet" / "seed0"
    assert run_state(folder, "K") is RunState.ABSENT
    _manifest(folder, status="running")
    assert run_state(folder, "K") is RunState.STALE  # these settings, unfinished: resumed in place
    assert run_state(folder, "other") is RunState.ABSENT  # unfinished other settings: nothing to keep
    _manifest(folder, status="complete")
    assert run_state(folder, "K") is RunState.STALE  # complete, but no metrics: evaluated again
    pd.DataFrame({"value": [1.0]}).to_parquet(folder / "metrics.parquet")
    assert run_state(folder, "K") is RunState.COMPLETE
    assert run_state(folder, "other") is RunState.CONFLICT  # completed with other settings: kept
    (folder / "manifest.json").write_text('{"status": "compl')
    assert run_state(folder, "K") is RunState.ABSENT  # a torn manifest is nobody's run


def test_list_runs_finds_trained_submitted_and_external_runs(tmp_path: Path):
    _manifest(tmp_path / "d" / "cpu" / "unet" / "seed0", status="complete")
    queued = tmp_path / "d" / "cpu@iterations=3" / "unet" / "seed1"
    queued.mkdir(parents=True)
    (queued / "job.json").write_text("{}")
    _manifest(tmp_path / "d" / "external" / "nnunet", status="complete")
    (tmp_path / "d" / "cpu" / "unet" / "notes").mkdir()
    assert list_runs(tmp_path) == sorted([tmp_path / "d" / "cpu" / "unet" / "seed0", queued,
                                          tmp_path / "d" / "external" / "nnunet"])


def test_an_lr_that_is_not_the_protocols_is_part_of_the_label_and_reads_back():
    from bench.engine.runs import lr_tag, split_lr

    assert RunSpec("unet", 0, 0.01, "protocol smoke").label == "unet"  # runs made before keep their folder
    tag = lr_tag(study="S", default_study="S")  # the model's default study
    tuned = RunSpec("swinunet", 0, 0.0117, "study S trial 3", knobs={"depths": [2, 2]}, lr_tag=tag)
    assert tuned.label == "swinunet@depths=[2, 2],lr=tuned"
    assert split_lr(tuned.label) == ("swinunet@depths=[2, 2]", "tuned")
    assert split_lr("unet@lr=0.02") == ("unet", "0.02") and split_lr("unet") == ("unet", None)
    assert split_lr("swinunet@skip_connections=0") == ("swinunet@skip_connections=0", None)
    assert lr_tag(0.02) == "0.02" and lr_tag(2e-5) == "2e-05"
    assert lr_tag(study="my study/1", default_study="tiny-unet-smoke-8de84022456a") == "tuned-my_study_1"


def test_a_derived_protocols_marked_description_keeps_the_key_of_runs_made_before(tmp_path: Path):
    from bench.engine.runs import config_key

    proto = load_protocol("smoke").derive(iterations=3)
    assert proto.description.endswith("[then changed: iterations=3]")
    config = {"model": "unet", "lr": 0.01, "protocol": proto.model_dump(), "dataset": {"fingerprint": "F"}}
    before = config | {"protocol": proto.model_dump() | {"description": load_protocol("smoke").description}}
    assert config_key(config) == config_key(before)  # a run of smoke@iterations=3 made before is still complete
    other = config | {"protocol": proto.derive(batch_size=4).model_dump()}
    assert config_key(other) != config_key(config)


# ----- the CPU thread count (issue 27) ---------------------------------------------------------

LEGACY = json.loads((Path(__file__).parent / "legacy_threads_manifests.json").read_text())


def _asked(manifest: dict, protocol) -> str:
    """The key a command computes today for the run of ``manifest`` (its model, seed, LR and data) under
    ``protocol``: ``run_config``'s fields, as the manifest recorded them, with today's protocol."""
    from bench.engine.runs import config_key

    config = {k: manifest[k] for k in ("model", "knobs", "weights", "seed", "lr", "lr_source", "dataset", "convention")}
    return config_key(config | {"protocol": protocol.model_dump(), "protocol_name": protocol.name,
                                "protocol_hash": protocol.hash()})


@pytest.mark.parametrize("run, protocol, changes, same", [
    # "recorded": the smoke of then, as the manifest records it (smoke itself now scores a subset: issue 26)
    ("smoke seed1 1 thread", "recorded", {}, True),  # it says 1 thread: the hash and the key are the ones of before
    ("smoke seed0 2 threads", "recorded", {}, False),  # same key as before, but made with another count
    ("cpu@iterations=2 seed0 2 threads", "cpu", {"iterations": 2}, True),  # cpu says 2: a new hash, still its run
    ("cpu@iterations=2 seed1 1 thread", "cpu", {"iterations": 2}, False),
])
def test_a_run_made_before_threads_was_a_key_is_the_run_of_the_count_it_recorded(tmp_path, run, protocol, changes,
                                                                                  same):
    from bench.engine import numerics
    from bench.engine.runs import same_run
    from bench.protocol import resolve_protocol

    m = LEGACY[run]
    asked = Protocol.model_validate(m["protocol"]) if protocol == "recorded" else resolve_protocol(protocol,
                                                                                                  changes=changes)
    assert asked.name == m["protocol_name"] and "threads" not in m["protocol"]
    key = _asked(m, asked)
    assert same_run(m, key) is same
    folder = tmp_path / "tiny" / asked.name / m["model"] / f"seed{m['seed']}"
    _manifest(folder, **m)
    pd.DataFrame({"value": [1.0]}).to_parquet(folder / "metrics.parquet")
    assert run_state(folder, key) is (RunState.COMPLETE if same else RunState.CONFLICT)  # never silently reused
    # the report takes it for the recipe it trained under: the protocol with the count it recorded
    assert numerics.threads_of(m) == m["threads"]
    assert numerics.protocol_hash_of(m) == asked.derive(threads=m["threads"]).hash()
    assert same == (numerics.protocol_hash_of(m) == asked.hash())


def test_two_thread_counts_are_two_runs_with_two_folders():
    from bench.engine.runs import same_run

    class Ds:
        name = "tiny"

    m = LEGACY["smoke seed1 1 thread"]
    one, two = load_protocol("smoke"), load_protocol("smoke").derive(threads=2)
    spec = RunSpec(m["model"], m["seed"], m["lr"], m["lr_source"])
    assert run_id(spec, one, Ds()).path(Path("r")) == Path("r/tiny/smoke") / m["model"] / "seed1"
    assert run_id(spec, two, Ds()).path(Path("r")) == Path("r/tiny/smoke@threads=2") / m["model"] / "seed1"
    k1, k2 = _asked(m, one), _asked(m, two)
    assert k1.endswith("@threads=1") and k2.endswith("@threads=2") and k1 != k2
    assert same_run({"key": k1, "protocol": one.model_dump()}, k1)
    assert not same_run({"key": k1, "protocol": one.model_dump()}, k2)
    # a file that changes its count under the same name: same folder, another run (kept, never reused)
    edited = load_protocol("smoke").model_copy(update={"threads": 2})
    assert not same_run({"key": k1, "protocol": one.model_dump()}, _asked(m, edited))


def test_folders_that_are_no_runs_are_set_apart_not_read_as_runs(tmp_path: Path):
    """Issue 25: one stray `seedabc` folder must not make the listing fail; it is named instead."""
    good = tmp_path / "d" / "cpu" / "unet" / "seed0"
    _manifest(good, status="complete")
    others = [tmp_path / "d" / "cpu" / "unet" / "seedabc", tmp_path / "d" / "cpu" / "unet" / "seed01",
              tmp_path / "d" / "external" / "seed3",  # an external run may not be called seed<k>
              tmp_path / "d" / "external" / "unet" / "seed0"]  # a trained run under the reserved name
    for folder in others:
        _manifest(folder, status="complete")
    _manifest(tmp_path / "d" / "external" / "nnunet", status="complete")
    runs, skipped = scan_runs(tmp_path)
    assert runs == sorted([good, tmp_path / "d" / "external" / "nnunet"]) == list_runs(tmp_path)
    assert skipped == sorted(others)


@pytest.mark.parametrize("name, needle", [("..", "contains '..'"), (".hidden", "starts with '.'"),
                                          ("a/b", "path separator"), ("seed3", "starts with 'seed'")])
def test_an_external_run_name_follows_the_name_rule(name, needle):
    with pytest.raises(BenchError, match=re.escape(needle)):
        external_id("synthetic", name)
    assert external_id("synthetic", "nnU-Net v2_3d").model == "nnU-Net v2_3d"


def test_a_trained_run_is_never_filed_outside_its_folder():
    class Ds:
        name = "tiny"

    with pytest.raises(BenchError, match="model name 'unet@decoder=../../x' contains a path separator"):
        run_id(RunSpec("unet", 0, 0.01, "flag", knobs={"decoder": "../../x"}), load_protocol("smoke"), Ds())
