"""The settings module: defaults derive from the state folder, bad configuration fails fast naming the variable."""

import secrets

import pytest

from core.settings import ConfigError, Settings, get_settings


@pytest.fixture(autouse=True)
def _clear_cache():
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_defaults_derive_from_state_dir(monkeypatch, tmp_path):
    for var in ("CLICKHOUSE_URL", "LAKE_URL", "SPARK_CHECKPOINT_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RETAIL_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("MINIO_PORT", "9123")
    monkeypatch.setenv("CLICKHOUSE_HTTP_PORT", "8124")
    token = secrets.token_urlsafe(12)  # [A-Za-z0-9_-]: left as is by URL quoting
    monkeypatch.setenv("CLICKHOUSE_WRITER_PASSWORD", token + "/+@")
    s = get_settings()
    # one client path: the native endpoint over HTTP as platform_writer, password URL-quoted
    assert s.clickhouse_url == f"http://platform_writer:{token}%2F%2B%40@localhost:8124"
    assert s.clickhouse_chdb_path == tmp_path / "chdb"
    assert s.lake_url == "http://localhost:9123"
    assert s.spark_checkpoint_dir == str(tmp_path / "checkpoints")
    assert s.lake_is_s3
    assert s.topic("sales-transactions") == "retail-sales-transactions"


@pytest.mark.parametrize("var,value,needle", [
    ("KAFKA_BOOTSTRAP_SERVERS", "no-port-here", "KAFKA_BOOTSTRAP_SERVERS"),
    ("CLICKHOUSE_URL", "mysql://x", "CLICKHOUSE_URL"),
    ("MINIO_PORT", "not-a-number", "MINIO_PORT"),
    ("SERVICE_LEVEL", "1.5", "SERVICE_LEVEL"),
])
def test_bad_configuration_names_the_variable(monkeypatch, var, value, needle):
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as err:
        get_settings()
    assert needle in str(err.value)


def test_require_names_missing_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("LAKE_URL", "http://localhost:9000")
    s = Settings(lake_access_key=None, _env_file=None)
    with pytest.raises(ConfigError, match="LAKE_ACCESS_KEY"):
        s.require("lake_access_key")


def test_local_folder_lake(monkeypatch, tmp_path):
    monkeypatch.setenv("LAKE_URL", str(tmp_path / "lake"))
    s = get_settings()
    assert not s.lake_is_s3
    from core.lake import Lake
    import pyarrow as pa

    lake = Lake(s)
    lake.ensure_buckets()
    lake.write_table(pa.table({"a": [1, 2]}), "raw-data", "x", "year=2024", "part.parquet")
    lake.write_table(pa.table({"a": [1, 2]}), "raw-data", "x", "year=2024", "part.parquet")  # overwrite
    assert lake.read_table("raw-data", "x").num_rows == 2



def test_readme_documents_every_setting():
    """The README's configuration table lists every environment variable the settings module reads."""
    from core.settings import REPO_ROOT

    readme = (REPO_ROOT / "README.md").read_text()
    missing = [name.upper() for name in Settings.model_fields if f"`{name.upper()}`" not in readme]
    assert not missing, f"README lacks configuration rows for {missing}: run python -m ops.cli config-table"


def test_readme_and_ci_run_the_same_test_command():
    from core.settings import REPO_ROOT

    assert "make test" in (REPO_ROOT / "README.md").read_text()
    assert "make test" in (REPO_ROOT / ".ci" / "run").read_text()
