import pytest

from cluster import Cluster


@pytest.fixture(scope="session")
def cluster():
    with Cluster() as c:
        with c.connect(autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_fraud")
            conn.execute("CREATE EXTENSION pg_cron")
        yield c


@pytest.fixture()
def db(cluster):
    """A fresh watched payments table per test (and a clean fraud schema state)."""
    with cluster.connect(autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS payments CASCADE")
        conn.execute(
            "TRUNCATE fraud.alerts, fraud.alert_deliveries, fraud.channels, fraud.labels, fraud.scoring_errors,"
            " fraud.models, fraud.model_deployments, fraud.scores CASCADE"
        )
        conn.execute(
            """CREATE TABLE payments (
                   id bigserial PRIMARY KEY, customer text NOT NULL, amount numeric NOT NULL,
                   at timestamptz NOT NULL DEFAULT now(), merchant text, device text,
                   lat double precision, lon double precision, country text)"""
        )
        conn.execute(
            "SELECT fraud.watch('payments', entity => 'customer', amount => 'amount', ts => 'at', merchant => 'merchant',"
            " device => 'device', lat => 'lat', lon => 'lon', country => 'country', risk_columns => true)"
        )
        conn.execute("INSERT INTO fraud.channels (name, min_level) VALUES ('webhook', 'high') ON CONFLICT DO NOTHING")
        yield cluster
