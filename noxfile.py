"""Sessions run inside the project's environment (install it first, as the README says).

    nox -s lint      ruff over the whole checkout, then mypy over bench/ and models/ (CI runs both first)
    nox -s tests     the test suite (what CI runs)
    nox -s demo      the main job: bench run --models swinunet,unet
    nox -s slow      reference tests marked slow
    nox -s perf      benchmark scripts (medians and ratios against the references)
"""
import nox

nox.options.sessions = ["lint", "tests"]


@nox.session(venv_backend="none")
def lint(session):
    session.run("ruff", "check", ".", *session.posargs)
    session.run("mypy")  # files and settings: [tool.mypy] in pyproject.toml


@nox.session(venv_backend="none")
def tests(session):
    session.run("python", "-m", "pytest", "-m", "not slow", *session.posargs)


@nox.session(venv_backend="none")
def slow(session):
    session.run("python", "-m", "pytest", "-m", "slow", *session.posargs)


@nox.session(venv_backend="none")
def demo(session):
    session.run("bench", "run", "--models", "swinunet,unet", *session.posargs)


@nox.session(venv_backend="none")
def perf(session):
    session.run("python", "benchmarks/bench_metrics.py", *session.posargs)
    session.run("python", "benchmarks/bench_inference.py", *session.posargs)


@nox.session(venv_backend="none")
def faults(session):
    session.run("python", "-m", "pytest", "-m", "faults", *session.posargs)
