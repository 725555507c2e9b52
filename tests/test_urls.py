"""Secrets in URLs (bench.urls): one rule for storages and tracking URIs, checked on every URL form."""
from __future__ import annotations

import pytest

from bench.urls import display_url, redact

# url, what is shown, the secrets that must never appear
FORMS = [
    ("http://bob:SECRET@127.0.0.1:9", "http://bob:***@127.0.0.1:9", ["SECRET"]),  # user:pass@ (issue 25, item 10)
    ("https://bob:S3CR3T@mlflow.lab.org/", "https://bob:***@mlflow.lab.org/", ["S3CR3T"]),
    ("http://:T0KEN@mlflow.lab:5000", "http://:***@mlflow.lab:5000", ["T0KEN"]),  # a password without a user
    ("http://bob:@mlflow.lab", "http://bob:***@mlflow.lab", []),  # an empty password: still marked
    ("http://bob:p%40ss%2Fw@mlflow.lab", "http://bob:***@mlflow.lab", ["p%40ss%2Fw", "p@ss/w"]),  # percent-encoded
    ("http://bob:RET@PW@mlflow.lab", "http://bob:***@mlflow.lab", ["RET", "PW"]),  # a raw '@' in the password
    ("http://bob:pa/ss?w@mlflow.lab/x", "http://bob:***@mlflow.lab/x", ["pa/ss?w"]),  # raw '/' and '?'
    ("https://mlflow.lab/?token=TOK123", "https://mlflow.lab/?token=***", ["TOK123"]),  # a token in the query
    ("https://mlflow.lab/api?access_token=AT1&x=1", "https://mlflow.lab/api?access_token=***&x=1", ["AT1"]),
    ("https://h/p?api_key=K1&apikey=K2&X-Api-Key=K3", "https://h/p?api_key=***&apikey=***&X-Api-Key=***",
     ["K1", "K2", "K3"]),
    ("https://bucket.s3/f?X-Amz-Credential=AKIA1&X-Amz-Signature=SIG9&X-Amz-Security-Token=ST7",
     "https://bucket.s3/f?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Security-Token=***",
     ["AKIA1", "SIG9", "ST7"]),  # a signed URL
    ("https://acct.blob/c?sv=2020&sig=AZSIG", "https://acct.blob/c?sv=2020&sig=***", ["AZSIG"]),  # Azure SAS
    ("postgresql://bench:s3cret@db.lab/optuna", "postgresql://bench:***@db.lab/optuna", ["s3cret"]),
    ("postgresql://db.lab/optuna?user=u&password=s3cret&sslmode=require",
     "postgresql://db.lab/optuna?user=u&password=***&sslmode=require", ["s3cret"]),
    ("postgresql://u@db.lab/optuna?sslpassword=k3y", "postgresql://u@db.lab/optuna?sslpassword=***", ["k3y"]),
    ("bob:SECRET@db.lab/optuna", "bob:***@db.lab/optuna", ["SECRET"]),  # user info without a scheme
    # nothing secret: shown as it is
    ("postgresql://db.lab/optuna?user=me@lab.org", "postgresql://db.lab/optuna?user=me@lab.org", []),
    ("postgresql://u@db.lab/optuna", "postgresql://u@db.lab/optuna", []),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000", []),
    ("sqlite:////data/results/mlflow/mlflow.db", "sqlite:////data/results/mlflow/mlflow.db", []),
    ("databricks://profile", "databricks://profile", []),
    ("journal:/shared/a@b/tune.log", "journal:/shared/a@b/tune.log", []),
]


@pytest.mark.parametrize("url, shown, secrets", FORMS, ids=[u for u, _, _ in FORMS])
def test_every_url_form_is_shown_without_its_secrets(url, shown, secrets):
    assert display_url(url) == shown
    message = redact(f"API request to {url}/api/2.0/mlflow/runs/create failed; Could not parse '{url}'", url)
    assert shown in message
    for secret in secrets:
        assert secret not in message and secret not in shown, secret


def test_a_message_quoting_a_secret_alone_or_encoded_hides_it():
    url = "http://bob:p@ss w@host"
    for form in ("p@ss w", "p%40ss%20w", "p%40ss+w"):
        assert "***" in redact(f"auth failed for {form}", url) and form not in redact(f"x {form}", url)
