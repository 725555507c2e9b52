"""bench run's LR choices (--lr default,tuned,0.02) and the header line that states them."""
import pytest

from bench.errors import BenchError
from bench.experiments.sweep import lr_header, parse_lrs
from bench.protocol import load_protocol


def test_lr_choices_parse_and_bad_ones_are_one_line():
    assert parse_lrs(None) == ["default"] and parse_lrs("Default, tuned,0.02") == ["default", "tuned", 0.02]
    for text, needle in (("fast", "expects numbers"), ("-1", "positive"), ("0.02,2e-2", "twice")):
        with pytest.raises(BenchError, match=needle):
            parse_lrs(text)


def test_the_run_header_says_how_the_protocol_lr_was_made():
    scaled = load_protocol("paper").derive(batch_size=12)
    assert lr_header({"unet": [(scaled.effective_lr(), f"protocol {scaled.name}", "")]}, scaled) == (
        "0.025 (scaled from 0.05 by the official batch rule: x 12/24, as batch 12 is a multiple of 6; "
        "protocol paper@batch_size=12)")
    cpu = load_protocol("cpu")
    lrs = {"unet": [(0.05, "protocol cpu", ""), (0.02, "study A trial 1", "tuned")],
           "swinunet": [(0.05, "protocol cpu", ""), (0.03, "study B trial 4", "tuned")]}
    assert lr_header(lrs, cpu) == ("0.05 (protocol cpu); unet 0.02 (study A trial 1), "
                                      "swinunet 0.03 (study B trial 4)")
