"""``bench nnunet``: nnU-Net v2 trained with its own recipe on our split, refereed as an external run."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer
from rich.text import Text

from bench.cli.app import app
from bench.cli.options import FROM_FLAGS, run_options
from bench.experiments.options import RunOptions


@app.command()
@run_options("protocol", "sets", "data_root", "fold", "results", "device", "force")
def nnunet(
    dataset: str = typer.Argument(..., help="The dataset (as `bench run --dataset`): nnU-Net trains on its "
                                  "training cases and predicts its test cases."),
    name: str | None = typer.Option(None, help="The external run's name (default: nnunet-<configuration>)."),
    configuration: str = typer.Option("2d", help="nnU-Net's configuration: 2d or 3d_fullres."),
    trainer: str = typer.Option("nnUNetTrainer", help="nnU-Net's trainer class (its own, or one found through "
                                "nnUNet_extTrainer)."),
    plans: str = typer.Option("nnUNetPlans", help="nnU-Net's plans: nnUNetPlans or a residual encoder preset "
                              "(nnUNetResEncUNetMPlans, ...L..., ...XL...)."),
    epochs: int | None = typer.Option(None, help="A shorter budget: epochs (default: the trainer's, 1000)."),
    iterations_per_epoch: int | None = typer.Option(None, help="A shorter budget: training iterations per epoch "
                                                    "(default: the trainer's, 250)."),
    val_iterations_per_epoch: int | None = typer.Option(None, help="Validation iterations per epoch (default: "
                                                        "the trainer's, 50)."),
    final_validation: bool = typer.Option(True, "--final-validation/--no-final-validation", help="With a "
                                          "shorter budget: nnU-Net's prediction of its validation cases after "
                                          "training (it does not change the test predictions)."),
    processes: int = typer.Option(1, help="Processes of nnU-Net's preprocessing, validation and prediction "
                                  "(nnUNet_def_n_proc); raise it on a machine with many cores."),
    augmentation_processes: int | None = typer.Option(None, help="nnUNet_n_proc_DA of training (default: "
                                                      "nnU-Net's, min(12, cores); in a Slurm or Ray task, its "
                                                      "CPUs - 1); 0 augments in the training process."),
    opts: RunOptions = FROM_FLAGS,
) -> None:
    """Train nnU-Net v2 with its own recipe on the dataset's training cases (the cases `bench run` trains on),
    predict its test cases and score them as an external run that `bench report` puts beside trained models."""
    from bench.cli.options import console
    from bench.data.resolve import resolve_dataset
    from bench.engine.train import Interrupted
    from bench.experiments.execute import Submitted, run_device
    from bench.experiments.nnunet import NnunetOptions
    from bench.experiments.nnunet_job import NnunetJob, default_name, execute_nnunet, read_rows
    from bench.report.console import render_rich, summary_table

    nn = NnunetOptions(configuration=configuration, trainer=trainer, plans=plans, epochs=epochs,
                       iterations=iterations_per_epoch, val_iterations=val_iterations_per_epoch,
                       final_validation=final_validation, processes=processes,
                       augmentation_processes=augmentation_processes)
    run_device(opts)  # a device this machine lacks is refused now (on a cluster: a device name that is none)
    protocol = opts.load_protocol()
    ds = resolve_dataset(dataset, say=console.print, data_root=opts.data_root, fold=opts.fold)
    job = NnunetJob(replace(ds, root=Path(ds.root).resolve()), protocol, nn, name or default_name(nn),
                    opts.run.results.resolve(), opts.run.device)
    try:
        outcome = execute_nnunet(job, opts)
    except Submitted:
        raise typer.Exit(0) from None
    except (Interrupted, KeyboardInterrupt) as e:
        console.print(f"interrupted{f': {e}' if str(e) else ''}; run the same command again to resume "
                      f"(nnU-Net continues from its last checkpoint)", markup=False)
        raise typer.Exit(130) from None
    if not outcome.ok:
        console.print(Text.assemble(("failed", "red"), f": nnU-Net '{job.name}': {outcome.message}"))
        raise typer.Exit(1)
    rows = read_rows(job)
    console.print(render_rich(summary_table(rows.assign(model=f"{job.name} (external)")),
                              f"{job.name} (nnU-Net, external) on {ds.name}, convention "
                              f"{protocol.evaluation.convention}", console.width))
    console.print(f"external run in {outcome.path}; nnU-Net's folders in {job.work}; `bench report --results "
                  f"{opts.run.results}` puts it beside the trained runs", markup=False)
