"""The table `bench run` prints: split into several tables so that each fits the terminal width."""
import io

import pandas as pd
from rich.console import Console

from bench.report.console import render_rich


def test_console_table_splits_models_to_fit_the_width():
    models = [f"swinunet-variant{k:02d}" for k in range(12)]
    columns = ["DSC %", "HD95", "aorta", "stomach", "seeds", "cases"]
    table = pd.DataFrame([[50.0 + k, 9.0, 40.0, 60.0, 1, 12] for k in range(12)], index=models, columns=columns)

    def show(table: pd.DataFrame, width: int) -> str:
        console = Console(width=width, record=True, file=io.StringIO())
        console.print(render_rich(table, "title", width))
        return console.export_text()

    for width in (80, 200):
        text = show(table, width)
        assert max(map(len, text.splitlines())) <= width
        assert "title (1/" in text
        for k, model in enumerate(models):  # every model once, with its own value
            assert text.count(model) == 1
            assert f"{50.0 + k:.2f}" in text
    assert "(1/" not in show(table.iloc[:2], 80)  # two models fit in one table
